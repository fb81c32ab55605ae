"""The layout of bundle/scripts: stage packages only, small modules, imports that run down the pipeline."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import scripts

SCRIPTS = Path(scripts.__file__).parent
TOP_LEVEL = {"__init__.py", "__main__.py", "bundle_config.py"}
MAX_LINES = 350
#: The one import that runs up the pipeline: each tumor-conditioned sample is written with its adherence report.
EXCEPTIONS = {("sampling", "evaluation")}


def package_imports() -> dict[str, set[str]]:
    """For each stage package, the other stage packages its modules import."""
    found: dict[str, set[str]] = {stage: set() for stage in scripts.STAGES}
    for stage in scripts.STAGES:
        for module in (SCRIPTS / stage).glob("*.py"):
            for node in ast.walk(ast.parse(module.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "scripts" and len(parts) > 1 and parts[1] in scripts.STAGES and parts[1] != stage:
                        found[stage].add(parts[1])
    return found


def test_top_level_holds_only_the_entry_modules_and_stage_packages():
    entries = {p.name for p in SCRIPTS.iterdir() if p.name != "__pycache__"}
    assert entries == TOP_LEVEL | set(scripts.STAGES)
    assert all((SCRIPTS / stage / "__init__.py").is_file() for stage in scripts.STAGES)


def test_no_module_is_over_the_line_limit():
    lengths = {str(p.relative_to(SCRIPTS)): len(p.read_text().splitlines()) for p in SCRIPTS.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_imports_run_down_the_pipeline():
    order = {stage: i for i, stage in enumerate(scripts.STAGES)}
    upward = {
        (stage, other) for stage, others in package_imports().items() for other in others if order[other] > order[stage]
    }
    assert upward == EXCEPTIONS


def test_no_import_cycle_between_packages():
    graph = package_imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    assert [stage for stage in graph if reaches(stage, stage, set())] == []


def test_a_training_config_loads_no_dicom_sampling_or_evaluation_code():
    """(MONAI itself imports pydicom and matplotlib; the bundle's own stages load only when a config names them.)"""
    probe = (
        "import sys; from scripts.bundle_config import load_bundle_config; "
        "p = load_bundle_config(['train_diffusion.json']); p.get_parsed_content('noise_scheduler'); "
        "p.get_parsed_content('stored_preprocessing'); p.get_parsed_content('network_inputs'); "
        "print(sorted(m for m in ('scripts.dicom', 'scripts.sampling', 'scripts.evaluation', 'scripts.phantoms') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=SCRIPTS.parent, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_configs_are_json_with_four_space_indents():
    configs = sorted((SCRIPTS.parent / "configs").glob("*.json"))
    unformatted = [
        p.name
        for p in configs
        if p.read_text() != json.dumps(json.loads(p.read_text()), indent=4, ensure_ascii=False) + "\n"
    ]
    assert configs and unformatted == []


def test_no_config_macro_points_at_another_macro():
    """`load_bundle_config` (the MONAI Label app's loader) makes each file's own macros absolute, not those of macro targets."""
    configs = SCRIPTS.parent / "configs"
    chains = []
    for path in sorted(configs.glob("*.json")):
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, str) and value.startswith("%configs/"):
                target_file, target_id = value[len("%configs/") :].split("#", 1)
                target = json.loads((configs / target_file).read_text())
                for part in target_id.split("#"):
                    target = target[int(part)] if isinstance(target, list) else target[part]
                if isinstance(target, str) and target.startswith("%"):
                    chains.append(f"{path.name}#{key} -> {value} -> {target}")
    assert chains == []
