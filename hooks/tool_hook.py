"""Claude Code and Gemini CLI tool hook: the claim-before-edit gate and the worker log (see hypervisor.hooks)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from hypervisor.hooks import main  # noqa: E402

raise SystemExit(main())
