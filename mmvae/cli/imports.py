"""`--import MODULE`: your own module (a dotted name on sys.path, or a `.py` file), imported before the command
runs so that its `mmvae.register_network` / `mmvae.register_likelihood` calls take effect. Only the modules
named on the command line are imported: never one because a checkpoint or config file names it."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import InputError

IMPORT_HELP = ("import your module (a dotted name on PYTHONPATH, or a file.py) before the command runs, so that the "
               "encoders, decoders and likelihoods it registers can be rebuilt from a checkpoint; repeatable")


def import_module(text: str, debug: bool = False) -> ModuleType:
    """Import `text` (a module name or the path of a .py file); InputError naming it when that fails (with
    `debug`, an error raised by the module's own code propagates with its traceback)."""
    try:
        if text.endswith(".py") or "/" in text or "\\" in text:
            return _import_file(Path(text))
        return importlib.import_module(text)
    except InputError as e:  # a registration that clashes, a file that is not there
        raise InputError(f"--import {text}: {e}") from None
    except Exception as e:  # the module is not on the path, or its own code failed
        if isinstance(e, ModuleNotFoundError) and e.name and (text == e.name or text.startswith(e.name + ".")):
            raise InputError(f"--import {text}: no module named {e.name!r} on the Python path (add its folder to "
                             f"PYTHONPATH, or give the path of its .py file)") from None
        if debug:
            raise
        raise InputError(f"--import {text}: importing it raised {type(e).__name__}: {e} "
                         f"(rerun with --debug for the traceback)") from None


def _import_file(path: Path) -> ModuleType:
    """Run the .py file at `path` as the module named by its stem (kept in sys.modules)."""
    if not path.is_file():
        raise InputError(f"no such file {str(path)!r}")
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{str(path)!r} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that its classes resolve by module (dataclasses, pickling)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
