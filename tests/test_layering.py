"""Imports point down only (service.api → service.engine → model), as ARCHITECTURE.md requires."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTTP_PACKAGES = {"fastapi", "starlette", "uvicorn", "httpx", "sse_starlette", "prometheus_client"}
TENSOR_PACKAGES = {"torch", "numpy", "safetensors", "tokenizers"}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = ".".join(path.relative_to(root).with_suffix("").parts[: -node.level])
            modules.add(f"{package}.{node.module}" if node.module else package)
    return modules


def imports_under(directory: str, root: Path) -> dict[str, set[str]]:
    return {
        str(p.relative_to(root)): imported_modules(p, root)
        for p in (root / directory).rglob("*.py")
    }


def offenders(directory: str, forbidden: set[str], root: Path = ROOT) -> list[str]:
    return [
        f"{path} imports {module}"
        for path, modules in imports_under(directory, root).items()
        for module in modules
        if module.split(".")[0] in forbidden
        or any(module.startswith(f + ".") or module == f for f in forbidden)
    ]


def test_model_imports_nothing_of_the_service():
    assert offenders("model", {"service"}) == []


def test_engine_knows_nothing_of_http_or_the_api():
    assert offenders("service/engine", {"service.api"} | HTTP_PACKAGES) == []


def test_api_never_touches_tensors():
    assert offenders("service/api", {"model"} | TENSOR_PACKAGES) == []


def test_the_checker_sees_imports(tmp_path):
    # Guards the guard: files that break the rule, absolutely or relatively, are reported.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.py").write_text("from service.api import app\nimport fastapi\n")
    (tmp_path / "service" / "engine").mkdir(parents=True)
    (tmp_path / "service" / "engine" / "bad.py").write_text("from ..api import routes\n")
    assert offenders("model", {"service"}, tmp_path) == ["model/bad.py imports service.api"]
    assert offenders("service/engine", {"service.api"}, tmp_path) == [
        "service/engine/bad.py imports service.api"
    ]
