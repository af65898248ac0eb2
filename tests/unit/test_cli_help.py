"""`--help` is Markdown: paragraphs reflow to the terminal, and nothing a help text shows is taken for markup."""

from typer.testing import CliRunner

from infra.cli import app


def helps(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_placeholders_and_brackets_survive() -> None:
    assert "<prefix>/services/<service>/instances/<instance>" in helps("registry")  # not an HTML tag
    assert "{stopped: [names]}" in helps("stack", "down")  # not a rich markup tag
    assert "<state>/datasets/risk" in helps("train")


def test_paragraphs_reflow_and_an_indented_example_keeps_its_lines() -> None:
    text = helps("demo-days")
    # the docstring wraps at 100 columns; at 200 the first paragraph's sentences share a line
    assert any("(and the slice itself, shown apart)" in line for line in text.splitlines())
    example = [line.strip() for line in helps("autoscale").splitlines()]
    at = example.index("[[autoscaler.services]]")
    assert example[at + 1:at + 3] == ['name = "api"', "capacity_rps = 20"]
