"""House rule: every public function of the data package has type hints (arguments and return)."""

import ast
from pathlib import Path

import pixart_pipeline.data as data_pkg

DATA = Path(data_pkg.__file__).parent


def _missing(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    args = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
    args += [x for x in (a.vararg, a.kwarg) if x is not None]
    out = [x.arg for x in args if x.annotation is None]
    return out + (["return"] if node.returns is None else [])


def test_public_data_functions_have_type_hints():
    missing = []
    for path in sorted(DATA.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            public = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_")
            if public and (gaps := _missing(node)):
                missing.append(f"{path.name}:{node.lineno} {node.name}: {gaps}")
    assert len(list(DATA.glob("*.py"))) > 10  # the walk saw the package
    assert missing == []
