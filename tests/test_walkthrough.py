"""docs/WALKTHROUGH.md is executed: each ```python block runs in one namespace
(as cells of a notebook would, stdout a text stream without a binary buffer,
as in Jupyter) and must print exactly the ```text block that follows it."""
import contextlib
import io
import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "WALKTHROUGH.md"


def cells():
    text = DOC.read_text()
    return re.findall(r"```python\n(.*?)```\n\n```text\n(.*?)```", text, re.S)


def test_walkthrough_outputs_are_real():
    pairs = cells()
    assert len(pairs) >= 8
    ns = {}
    for code, expected in pairs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), ns)
        assert out.getvalue() == expected, code
