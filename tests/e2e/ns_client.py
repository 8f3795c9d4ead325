"""An InferenceSession run from inside an emulated host (the test process, in the root namespace,
cannot reach the LAN). Started by e2e_helpers.ns_client with one JSON argument:

    {"dist", "interface", "peers", "inputs": [npz...], "outputs": [npz...], "wait_go", "timeout_s",
     "discover_timeout_s"}

With wait_go it imports everything, prints `client-waiting` and starts the session only when a
line arrives on stdin, so the time it reports is discovery, not Python start-up. It prints one JSON
line: {"t_go", "t_found", "t_done"} (wall-clock seconds), or {"error", "message", "t_go", "t_fail"}.
"""

import json
import sys
import time

import numpy as np  # noqa: F401  (imported before the timed part)

import edgepart
from edgepart.agent import app as _app  # noqa: F401  (pyzmq, zeroconf: imported before the timed part)
from edgepart.inputs import load_npz, save_npz


def main() -> None:
    args = json.loads(sys.argv[1])
    if args["wait_go"]:
        print("client-waiting", flush=True)
        sys.stdin.readline()
    t_go = time.time()
    try:
        with edgepart.InferenceSession(args["dist"], interface=args["interface"], peers=args["peers"],
                                       timeout_s=args["timeout_s"],
                                       discover_timeout_s=args["discover_timeout_s"],
                                       insecure=args.get("insecure", False)) as sess:
            t_found = time.time()
            for inp, outp in zip(args["inputs"], args["outputs"]):
                res = sess.submit(load_npz(inp)).result(args["timeout_s"] + 5)
                save_npz(outp, res)
            t_done = time.time()
    except edgepart.EdgepartError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e), "t_go": t_go, "t_fail": time.time()}), flush=True)
        return
    print(json.dumps({"t_go": t_go, "t_found": t_found, "t_done": t_done}), flush=True)


if __name__ == "__main__":
    main()
