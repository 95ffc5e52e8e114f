"""What every experiment's table.md shares: the machine line and the criteria list after the table."""

from __future__ import annotations


def write_with_criteria(path: str, lines: list[str], criteria: list[dict]) -> str:
    """Write a table's markdown `lines` followed by the criteria, each MET or NOT MET; returns the text."""
    from recordio_tools.files import write_text_atomic

    lines = lines + ["", "Criteria (fixed before the run):", ""]
    lines += [f"- {'MET' if c['met'] else 'NOT MET'}: {c['criterion']} -- {c['detail']}" for c in criteria]
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text



def machine_line(info: dict) -> str:
    return (f"{info['host']}, {info['cpu']}, {info['cores']} cores (shared; load {info['load_average_1min']} at "
            f"start), torch {info.get('torch')}")
