#!/usr/bin/env python3
"""Start `hypervisor` from the plugin folder this script lives in, with an interpreter that has its dependencies.

Usage: python3 launch.py ARGS...   (e.g. `launch.py mcp`), as .mcp.json and gemini-extension.json do.

The code always comes from <this folder>/../src, never from the current folder or the plugin folder's name.
`mcp` starts the stdio front (hypervisor.frontends.mcp_front), which answers the MCP handshake at once and starts the real
server behind it; anything else runs the CLI. The interpreter is the first that has the dependencies:
$HYPERVISOR_PYTHON, <plugin>/.venv/bin/python, this one, or one made once in $CLAUDE_PLUGIN_DATA (or
~/.cache/hypervisor) from the pinned requirements.lock (hypervisor.frontends.launcher). Standard library only.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))


def main() -> None:
    if sys.argv[1:2] == ["mcp"]:
        from hypervisor.frontends import mcp_front

        mcp_front.main(ROOT, sys.argv[2:])
        return
    from hypervisor.frontends import launcher

    env = dict(os.environ)
    try:
        python = launcher.python_for(ROOT, env)
    except RuntimeError as error:
        sys.exit(f"hypervisor: {error}")
    os.execve(python, [python, "-m", "hypervisor", *sys.argv[1:]], launcher.child_env(ROOT, env))


if __name__ == "__main__":
    main()
