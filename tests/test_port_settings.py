"""FARM_API_PORT / FARM_FLOWER_PORT: what their descriptions say is what `farm up` does.

The whole `farm up` with a taken port: tests/test_stack.py::test_up_refuses_a_taken_port_naming_it.
"""

from __future__ import annotations

import socket

import pytest

from farm.errors import StackError
from farm.local.stack import Stack
from farm.settings import Settings


@pytest.mark.parametrize(
    ("field", "variable"), [("api_port", "FARM_API_PORT"), ("flower_port", "FARM_FLOWER_PORT")]
)
def test_a_taken_port_is_refused_as_its_description_says(tmp_path, field, variable):
    text = Settings.model_fields[field].description
    assert "busy" not in text and "refuses a taken" in text, text  # no fallback promised
    assert f"`{variable}` | " in Settings.markdown_table()  # the README table says the same
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        other = "flower_port" if field == "api_port" else "api_port"
        stack = Stack(Settings(state_dir=tmp_path, **{field: port, other: 0}))
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is taken \\({variable}\\)"):
            stack._check_ports()
    assert stack._check_ports()[field.split("_")[0]] == port  # free again: taken as asked
