"""The import arrows between the packages, as docs/architecture.md draws them (the page's two drawings
are read here and must show exactly the arrows these tests allow)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("yolor", "export", "train", "service", "cli", "bench", "predict")
ALLOWED = {
    "cli": {"train", "export", "service", "yolor", "bench", "predict"},
    "predict": {"service"},
    "bench": {"service", "yolor", "export"},  # yolor: bench torch and gpu; export: bench torch only
    "train": {"service", "yolor"},
    "export": {"service", "yolor", "train"},  # train: datasets and mAP, for INT8 calibration and its gate
    "service": set(),
    "yolor": set(),
}
LAZY_ONLY = {("service", "yolor")}  # the torch backend imports yolor inside the function that loads it


def imports(package: str) -> dict[str, list[tuple[str, int, bool]]]:
    """{imported package: [(file, line, at module level)]} for the project packages `package` imports."""
    found: dict[str, list[tuple[str, int, bool]]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in PACKAGES and root != package:
                    where = (str(path.relative_to(ROOT)), node.lineno, id(node) in top_level)
                    found.setdefault(root, []).append(where)
    return found


def test_packages_import_only_along_the_documented_arrows():
    for package in PACKAGES:
        for target, places in imports(package).items():
            if (package, target) in LAZY_ONLY:
                at_top = [p for p in places if p[2]]
                assert not at_top, f"{package} imports {target} at module level: {at_top}"
            else:
                assert target in ALLOWED[package], f"{package} must not import {target}: {places}"


def test_the_check_sees_imports():  # the walker finds what is there, so the test above can fail
    assert {"service", "yolor"} <= set(imports("export"))
    assert [p for p in imports("service")["yolor"] if not p[2]]


# Inside service/: the rooms and the arrows between them (docs/architecture.md, "The rooms of service/").
ROOMS = ("core", "backends", "processing", "tracking", "streams", "http", "kserve")
ROOM_ALLOWED = {
    "processing": set(),
    "tracking": {"processing"},
    "backends": {"processing"},  # backends/factory.py alone also reads the settings and the manifest
    "core": {"backends", "processing", "tracking"},
    "streams": {"core", "processing", "tracking"},
    "kserve": {"core", "processing", "backends"},
    "http": {"core", "kserve", "processing", "backends", "tracking", "streams"},
}
FRAMEWORKS = {"fastapi", "starlette", "grpc", "uvicorn"}
NO_FRAMEWORK = (
    "core",
    "backends",
    "processing",
    "tracking",
    "streams",
    "kserve/inference.py",
    "kserve/models.py",
    "kserve/tensors.py",
)


def room_imports(room: str) -> list[tuple[str, str, int]]:
    """(file, imported module, line) for every import in service/<room>/."""
    found = []
    for path in sorted((ROOT / "service" / room).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(str(path.relative_to(ROOT / "service")), name, node.lineno) for name in names]
    return found


def test_the_rooms_of_service_import_along_the_arrows():
    for room in ROOMS:
        for file, module, line in room_imports(room):
            parts = module.split(".")
            if parts[0] == "service" and len(parts) > 1 and parts[1] in ROOMS and parts[1] != room:
                assert parts[1] in ROOM_ALLOWED[room], f"{file}:{line} imports {module}"


def test_the_core_and_the_codecs_import_no_web_or_grpc_framework():
    for place in NO_FRAMEWORK:
        room = place.split("/")[0]
        for file, module, line in room_imports(room):
            if file == place or not place.endswith(".py"):
                assert module.split(".")[0] not in FRAMEWORKS, f"{file}:{line} imports {module}"


def test_only_the_tracing_module_imports_opentelemetry():
    """Elsewhere in the server only for type checking: off, the SDK is never imported."""
    found = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        if path.name == "tracing.py" and path.parent.name == "service":
            continue
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.startswith("opentelemetry")
                ]
    assert not found, found


def test_the_room_check_sees_arrows():  # so that the two tests above can fail
    http = {m.split(".")[1] for _, m, _ in room_imports("http") if m.startswith("service.") and "." in m}
    assert {"core", "kserve"} <= http
    assert any(m.startswith("fastapi") for _, m, _ in room_imports("http"))


def drawn_arrows(section: str) -> dict[str, set[str]]:
    """{package or room: the names it points at} from the first drawing under `## {section}` in
    docs/architecture.md: `name/ -> a/, b/ ...`, up to the description (after "(" or 3+ spaces)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    drawing = re.search(rf"(?ms)^## {re.escape(section)}\n.*?^```\n(.*?)^```", page)
    assert drawing, section
    arrows = {}
    for line in drawing.group(1).splitlines():
        found = re.match(r"^(\w+)/\s+->\s+(.*)$", line)
        if found:
            targets = re.split(r"\(|\s{3,}", found.group(2))[0]
            arrows[found.group(1)] = set(re.findall(r"(\w+)/", targets))
    return arrows


def test_the_architecture_page_draws_exactly_these_arrows():
    lazy = {package: {t for p, t in LAZY_ONLY if p == package} for package in PACKAGES}
    assert drawn_arrows("The packages") == {p: ALLOWED[p] | lazy[p] for p in PACKAGES}
    assert drawn_arrows("The rooms of `service/`") == ROOM_ALLOWED
