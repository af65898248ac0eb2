from pathlib import Path

from infra.core.config_doc import markdown_table, rows

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_matches_the_settings() -> None:
    text = README.read_text()
    assert markdown_table() in text, "README's configuration table is stale: paste `foresight config --reference`"
    assert len(list(rows())) > 40


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "./run demo" in text and "./run test" in text
