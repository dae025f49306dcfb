import subprocess
import sys

from effstudio.cli import COMMANDS, main


def test_help_lists_every_verb(capsys) -> None:
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for verb in COMMANDS:
        assert verb in out


def test_python_dash_m_works_like_the_script() -> None:
    out = subprocess.run([sys.executable, "-m", "effstudio", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert out.stdout.startswith("effstudio ")


def test_missing_file_is_one_line_exit_2(capsys, tmp_path) -> None:
    missing = tmp_path / "nope.onnx"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "no such file" in err[0]


def test_model_verbs_help_lists_the_demo_models(capsys) -> None:
    from effstudio.core.zoo import DEMOS

    try:
        main(["inspect", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in DEMOS:
        assert f"demo:{name}" in out
