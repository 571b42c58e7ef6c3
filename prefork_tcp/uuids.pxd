# Types of the compiled core (prefork_tcp/compiled.py): nothing declared here. The pool
# and its position stay module globals, which a fork resets (uuids.py); the text is C
# (cuuids.pxd).
