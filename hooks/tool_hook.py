"""Claude Code and Gemini CLI tool hook: the claim-before-edit gate and the worker log (see hypervisor.hooks.edge)."""

import os
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
sys.path.insert(0, SRC)

# Note every module the import system compiles from source (its .pyc missing or stale; PYTHONDONTWRITEBYTECODE
# then keeps Python from writing one), so the hook can write those .pyc files once it has answered.
compiled = []
try:
    import _frozen_importlib_external as _external  # the import system itself: already loaded

    _source_to_code = _external.SourceLoader.source_to_code

    def _noting(loader, data, path, *args, **kwargs):
        compiled.append(path)
        return _source_to_code(loader, data, path, *args, **kwargs)

    _external.SourceLoader.source_to_code = _noting
except (ImportError, AttributeError):
    _external = None

try:
    from hypervisor.hooks.edge import main
except Exception as error:  # noqa: BLE001 - a damaged install: the hook's contract is still exit 0, the call allowed
    why = " ".join(f"{type(error).__name__}: {error}".split())
    sys.stderr.write(
        f"hypervisor hook: cannot load the hypervisor package from {SRC} ({why}); the call goes ahead unchecked\n"
    )
    compiled = []  # nothing worth caching from an install that does not import

    def main():
        return 0


code = main()
if compiled:
    try:
        sys.stdout.flush()  # the CLI has the answer before any compiling starts
        from hypervisor.core.bytecode import compile_sources  # noted too, if it compiles from source
    except Exception:  # noqa: BLE001 - the cache is a nicety: it never costs the session its answer
        compiled = []
if _external is not None:
    _external.SourceLoader.source_to_code = _source_to_code
if compiled:
    compile_sources(compiled)
raise SystemExit(code)
