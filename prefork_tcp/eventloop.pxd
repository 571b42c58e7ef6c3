# Types of the compiled core (prefork_tcp/compiled.py): the loop's ``conn`` is a Connection.

from prefork_tcp.connection cimport Connection
from prefork_tcp.framing cimport Framer
from prefork_tcp.sysio cimport recv, send
