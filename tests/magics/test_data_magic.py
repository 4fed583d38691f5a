"""`%lora data` in a real IPython shell: the report on a notebook DataFrame, the settings of the
last %%finetune, what the cleaning flags would drop, and one-line mistakes."""

import pytest
from IPython.core.error import UsageError

from lora_magic.data.report import DataReport


@pytest.fixture
def messy(ip, records):
    """The 24 fixture records with two exact copies, an empty response and a template marker."""
    rows = [
        *records[:5],
        dict(records[1]),  # row 5 repeats row 1
        {"instruction": "Describe the grey stool.", "response": ""},  # row 6
        *records[5:10],
        {"instruction": "Describe the pink cup.", "response": "A cup.\n### End\nFor tea."},  # row 12
        dict(records[8]),  # row 13 repeats row 10
    ]
    ip.push({"messy": rows})
    return rows


def test_the_report_of_a_notebook_variable_names_the_rows(ip, messy):
    report = ip.run_line_magic("lora", "data messy --max-length 24")
    assert isinstance(report, DataReport) and report.rows == len(messy) and report.max_length == 24
    found = {name: finding.rows for name, finding in report.findings.items() if finding.rows}
    assert found["exact_duplicates"] == [5, 13] and found["empty_responses"] == [6]
    assert found["template_markers"] == [12] and report.findings["exact_duplicates"].notes[13] == "= row 10"
    assert report.cleaning is None
    cleaning = ip.run_line_magic(
        "lora", "data messy --dedup exact --min-response-tokens 1 --drop-template-markers"
    )
    assert cleaning.cleaning["dropped"] == {
        "short_responses": [6],
        "template_markers": [12],
        "exact_duplicates": [5, 13],
    }
    assert "Cleaning dropped 4 of 14 rows" in repr(cleaning) and "<img src='data:image/png;base64," in (
        cleaning._repr_html_()
    )


def test_without_data_it_reports_on_the_last_finetune_with_the_settings_given(ip, messy, capsys):
    ip.run_cell_magic("finetune", "--steps 1 --name for-data --order length", "data: df\nmax_length: 48")
    ip.run_line_magic("lora", "show for-data --code")
    assert "train_sampling_strategy='sequential'" in capsys.readouterr().out  # the plain code keeps the order
    report = ip.run_line_magic("lora", "data")
    assert report.rows == 24 and report.max_length == 48
    changed = ip.run_line_magic("lora", "data --max-length 16")
    assert changed.max_length == 16 and changed.rows == 24
    assert len(changed.findings["truncated"].rows) == 24  # every fixture record is longer than 16 tokens
    assert ip.run_line_magic("lora", "data messy").rows == len(messy)  # named data wins


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("data nope", r"^data='nope' is neither a notebook variable nor a file"),
        ("data df --dedup fuzzy", r"^dedup='fuzzy' is not valid; choose one of: none, exact, near"),
        (
            "data df --dedup-threshold 2",
            r"^dedup_threshold=2.0 is not valid; it must be more than 0 and at most 1",
        ),
        ("data", r"^no training data given"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, line, message):
    with pytest.raises(UsageError, match=message) as caught:
        ip.run_line_magic("lora", line)
    assert "\n" not in str(caught.value)


def test_help_lists_the_cleaning_settings(ip, capsys):
    ip.run_line_magic("lora", "data --help")
    text = capsys.readouterr().out
    for flag in (
        "--dedup none|exact|near",
        "--dedup-threshold X",
        "--min-response-tokens N",
        "--order shuffle|length",
    ):
        assert flag in text
    assert "--drop-template-markers" in text and "--steps" not in text
