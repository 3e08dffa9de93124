"""Counts the faults tests/fault/ injects and survives, and the records lost or duplicated by them, and prints
one line at the end of the pytest run: faults: injected N, survived N, records lost 0, records duplicated 0."""
COUNTS = {"injected": 0, "survived": 0, "lost": 0, "duplicated": 0}


def injected(n: int = 1) -> None:
    COUNTS["injected"] += n


def survived(n: int = 1) -> None:
    COUNTS["survived"] += n


def records(lost: int, duplicated: int) -> None:
    COUNTS["lost"] += lost
    COUNTS["duplicated"] += duplicated


def pytest_terminal_summary(terminalreporter):
    if COUNTS["injected"]:
        terminalreporter.write_line(f"faults: injected {COUNTS['injected']}, survived {COUNTS['survived']}, "
                                    f"records lost {COUNTS['lost']}, records duplicated {COUNTS['duplicated']}")
