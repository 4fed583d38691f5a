import subprocess
import sys

HEAVY = "{'torch', 'transformers', 'peft', 'trl', 'bitsandbytes', 'datasets'}"


def heavy_modules_after(code: str) -> str:
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))"
    return subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_importing_the_package_imports_nothing_heavy():
    assert heavy_modules_after("import lora_magic") == "[]"


def test_loading_the_extension_in_ipython_imports_nothing_heavy():
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "shell.extension_manager.load_extension('lora_magic')\n"
        "assert 'lora' in shell.magics_manager.magics['line']"
    )
    assert heavy_modules_after(code) == "[]"
