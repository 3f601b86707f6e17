"""What a run leaves in its folder while it trains: loss.csv, loss.png, a progress bar.

loss.csv has one row per optimizer step (step, loss, lr, seconds since start, and any
extra columns a trainer adds). On resume the rows past the resumed step are dropped, so
the file always describes the run as if it had never stopped.
"""
from __future__ import annotations

import csv
import itertools
import logging
import os
import time

log = logging.getLogger(__name__)


class Logbook:
    def __init__(self, out_dir: str, columns=("loss",), start_step: int = 0, total_steps: int = 0,
                 progress: bool = True, title: str = "training"):
        self.csv_path = os.path.join(out_dir, "loss.csv")
        self.png_path = os.path.join(out_dir, "loss.png")
        self.columns = ["step", *columns, "lr", "seconds"]
        self.title = title
        self.t0 = time.perf_counter()
        self.offset = 0.0
        self._truncate(start_step)
        new = not os.path.isfile(self.csv_path)
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.columns)
        self.bar = None
        if progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total_steps, initial=start_step, desc=title, unit="step", dynamic_ncols=True)
            except ImportError:
                log.info("tqdm is not installed: no progress bar (pip install -r requirements-train.txt)")

    def _truncate(self, start_step: int):
        if not os.path.isfile(self.csv_path):
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= start_step]
        if len(keep) > 1:
            self.offset = float(keep[-1][-1])
        with open(self.csv_path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def write(self, step: int, lr: float, **values):
        secs = self.offset + time.perf_counter() - self.t0
        self._csv.writerow([step] + [f"{values[c]:.6g}" for c in self.columns[1:-2]] + [f"{lr:.6g}", f"{secs:.2f}"])
        self._file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)

    def plot(self):
        """loss.png from loss.csv (raw and a moving average); skipped without matplotlib."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.info("matplotlib is not installed: no loss.png (pip install -r requirements-train.txt)")
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        steps = [int(r["step"]) for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for col in self.columns[1:-2]:
            vals = [float(r[col]) for r in rows]
            ax.plot(steps, vals, alpha=0.3, linewidth=0.8)
            k = max(1, len(vals) // 50)
            cs = [0.0, *itertools.accumulate(vals)]
            smooth = [(cs[i + 1] - cs[max(0, i - k + 1)]) / (i + 1 - max(0, i - k + 1)) for i in range(len(vals))]
            ax.plot(steps, smooth, label=f"{col} (mean of {k})" if k > 1 else col)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.title)
        ax.legend()
        fig.tight_layout()
        tmp = self.png_path + ".tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.png_path)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self._file.close()
