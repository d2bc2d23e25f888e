"""Progress bars that behave in logs.

In a terminal a tqdm bar redraws in place. In a log file or CI, a redrawn bar (and every
``set_postfix``) would add a line each time, so there the bar is off and one summary line
is printed when the loop ends: what ran, how many steps, how long, the last postfix.
"""

import sys
import time

from tqdm import tqdm


class ProgressBar(tqdm):
    """``tqdm`` that prints one line per loop instead of redrawing when stderr is not a
    terminal. ``enabled=False`` silences it altogether."""

    def __init__(self, iterable=None, desc: str = "", total=None, enabled: bool = True):
        self._summary = enabled and not sys.stderr.isatty()
        self._t0 = time.perf_counter()
        self._label, self._last_postfix = desc, ""
        super().__init__(iterable, desc=desc, total=total, disable=not enabled or self._summary)

    def __iter__(self):
        yield from super().__iter__()
        self.close()  # a disabled tqdm never closes itself

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        if self._summary:
            items = {**(ordered_dict or {}), **kwargs}
            self._last_postfix = ", ".join(f"{k}={v}" for k, v in items.items())
            return None
        return super().set_postfix(ordered_dict, refresh, **kwargs)

    def close(self):
        if self._summary:
            self._summary = False  # close() may run twice (explicitly and on deletion)
            total = self.total if self.total is not None else "?"
            line = f"{self._label}: {total} steps in {time.perf_counter() - self._t0:.1f} s"
            print(line + (f" ({self._last_postfix})" if self._last_postfix else ""), flush=True)
        super().close()
