import gc
from prefork_tcp.examples.ping import main as _main
def main(worker):
    gc.disable()
    _main(worker)
def freeze(worker):
    gc.freeze()
    _main(worker)
