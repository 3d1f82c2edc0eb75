"""dacd app: `python app.py [--checkpoint DIR] [--port N]` (also the Hugging Face Space entry point)."""

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from dacd.defaults import APP_LIMITS, CHECKPOINT_ENV  # noqa: E402
from dacd.explore import Workbench  # noqa: E402
from dacd.ui import build_app, launch_kwargs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=os.environ.get(CHECKPOINT_ENV),
                   help=f"dacd checkpoint folder (default: ${CHECKPOINT_ENV} or checkpoints/fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: $DACD_FASHION_MNIST_DIR "
                   "or /usr/share/datasets/fashion-mnist)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("DACD_THREADS", "1")),
                   help="torch threads per request (default 1, $DACD_THREADS): the app then serves one request per "
                        "core at once; bench/app_latency.py --threads measures the choice")
    args = p.parse_args(argv)
    torch.set_num_threads(APP_LIMITS["threads"].check(args.threads))
    demo = build_app(Workbench(args.checkpoint, data_dir=args.data_dir))
    demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs())


if __name__ == "__main__":
    main()
