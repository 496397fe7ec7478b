"""A stand-in job for tests of `./launch.sh local`: process 0 ignores SIGTERM, process 1 then fails.

    ./launch.sh local --processes=2 --grace=1 --module=tests.launcher_stub -- READY_FILE
"""

import os
import pathlib
import signal
import sys
import time

if __name__ == "__main__":
    ready = pathlib.Path(sys.argv[1])
    if os.environ["MESHLM_PROCESS_ID"] == "0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a process stuck where SIGTERM cannot stop it
        ready.write_text(str(os.getpid()))
        time.sleep(120)
    else:
        while not ready.exists():
            time.sleep(0.05)
        print("process 1 fails", flush=True)
        sys.exit(3)
