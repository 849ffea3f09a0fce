# ruff: noqa: E501 -- KERNEL_SETUP is code for the kernel, kept compact
"""The code the Python code interpreter's kernel runs once at start (before it serves): the
chart formatter and the import hook behind it. Read by ``_kernel_bridge.py``, which runs as a
script under the image's python3 and imports this file from its own directory; stdlib-free
text, so the agent never executes it.
"""

# Runs once inside the kernel, silently. It must not import matplotlib (that costs ~0.3 s):
# an import hook patches pie()/bxp() to remember their input when the user imports it.
KERNEL_SETUP = r"""
def __hutch_setup():
    import sys, importlib.abc, importlib.util
    for blocked in ("debugpy", "jedi"):  # see KERNEL_LAUNCH
        if blocked in sys.modules and sys.modules[blocked] is None:
            del sys.modules[blocked]
    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter
    from traitlets import Unicode

    def patch_axes(mod):
        Axes = mod.Axes
        pie, bxp = Axes.pie, Axes.bxp
        def hutch_pie(self, x, *args, **kwargs):
            labels = kwargs.get("labels")
            if labels is None and len(args) >= 2:
                labels = args[1]
            self._hutch_pie = {"values": [float(v) for v in x],
                               "labels": None if labels is None else [str(l) for l in labels]}
            return pie(self, x, *args, **kwargs)
        def hutch_bxp(self, bxpstats, *args, **kwargs):
            self._hutch_box = list(bxpstats)
            return bxp(self, bxpstats, *args, **kwargs)
        Axes.pie, Axes.bxp = hutch_pie, hutch_bxp

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "matplotlib.axes._axes":
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module
            def run(module):
                exec_module(module)
                patch_axes(module)
            spec.loader.exec_module = run
            return spec
    if "matplotlib.axes._axes" in sys.modules:
        patch_axes(sys.modules["matplotlib.axes._axes"])
    else:
        sys.meta_path.insert(0, Finder())

    def num(v):
        # An int stays an int and a float a float (E2B's charts keep them apart); dates as
        # ISO strings; JSON has no NaN or infinity.
        import numbers
        if isinstance(v, numbers.Integral):
            return int(v)
        if hasattr(v, "isoformat"):
            return v.isoformat()
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        return f if f == f and abs(f) != float("inf") else None

    def axis_scale(axis, scale):
        get = getattr(axis, "get_converter", None)
        converter = get() if get is not None else getattr(axis, "converter", None)
        name = type(converter).__name__ if converter is not None else ""
        if "Date" in name:
            return "datetime"
        if "Category" in name:
            return "categorical"
        return scale

    def axis_ticks(axis, scale):
        locs = list(axis.get_ticklocs())
        if scale == "datetime":
            from matplotlib.dates import num2date
            ticks = [num2date(v).isoformat() for v in locs]
        else:
            ticks = [float(v) for v in locs]
        return ticks, [t.get_text() for t in axis.get_ticklabels()]

    def planar(ax, base):
        # The axes of a line or scatter chart: scales as E2B names them, ticks and their labels.
        x_scale = axis_scale(ax.xaxis, base["x_scale"])
        y_scale = axis_scale(ax.yaxis, base["y_scale"])
        x_ticks, x_tick_labels = axis_ticks(ax.xaxis, x_scale)
        y_ticks, y_tick_labels = axis_ticks(ax.yaxis, y_scale)
        return dict(base, x_scale=x_scale, y_scale=y_scale, x_ticks=x_ticks,
                    x_tick_labels=x_tick_labels, y_ticks=y_ticks, y_tick_labels=y_tick_labels)

    def nums(seq):
        return [num(v) for v in seq]

    def extract_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.container import BarContainer
        base = {"title": ax.get_title(), "x_label": ax.get_xlabel(), "y_label": ax.get_ylabel(),
                "x_scale": ax.get_xscale(), "y_scale": ax.get_yscale()}
        pie = getattr(ax, "_hutch_pie", None)
        if pie is not None:
            labels = pie["labels"] or [str(i) for i in range(len(pie["values"]))]
            total = sum(pie["values"]) or 1.0
            return dict(base, type="pie", elements=[
                {"label": l, "value": num(v), "fraction": v / total}
                for l, v in zip(labels, pie["values"])])
        box = getattr(ax, "_hutch_box", None)
        if box is not None:
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            elements = []
            for i, s in enumerate(box):
                label = s.get("label")
                if label is None:
                    label = ticks[i] if i < len(ticks) and ticks[i] else str(i + 1)
                elements.append({"label": str(label), "min": num(s["whislo"]),
                                 "first_quartile": num(s["q1"]), "median": num(s["med"]),
                                 "third_quartile": num(s["q3"]), "max": num(s["whishi"]),
                                 "outliers": nums(s.get("fliers", []))})
            return dict(base, type="box_and_whisker", elements=elements)
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        if bars:
            ticks = {float(t): l.get_text() for t, l in zip(ax.get_xticks(), ax.get_xticklabels())}
            horizontal = getattr(bars[0], "orientation", "vertical") == "horizontal"
            if horizontal:
                ticks = {float(t): l.get_text() for t, l in zip(ax.get_yticks(), ax.get_yticklabels())}
            elements = []
            for c in bars:
                group = c.get_label() or ""
                if group.startswith("_"):
                    group = ""
                for r in c.patches:
                    if horizontal:
                        center, value = r.get_y() + r.get_height() / 2, r.get_width()
                    else:
                        center, value = r.get_x() + r.get_width() / 2, r.get_height()
                    label = ticks.get(float(center)) or ticks.get(round(center, 9)) or num(center)
                    elements.append({"label": label, "value": num(value), "group": group})
            return dict(base, type="bar", elements=elements)
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        if scatters:
            elements = []
            for i, c in enumerate(scatters):
                pts = c.get_offsets()
                label = c.get_label()
                elements.append({"label": label if label and not label.startswith("_") else f"series {i}",
                                 "points": [[num(x), num(y)] for x, y in pts]})
            return dict(planar(ax, base), type="scatter", elements=elements)
        lines = [l for l in ax.get_lines()]
        if lines:
            elements = []
            for i, l in enumerate(lines):
                label = l.get_label()
                elements.append({"label": label if label and not label.startswith("_") else f"series {i}",
                                 "x": nums(l.get_xdata()), "y": nums(l.get_ydata())})
            return dict(planar(ax, base), type="line", elements=elements)
        return dict(base, type="unknown", elements=[])

    def extract_figure(fig):
        charts = [extract_axes(ax) for ax in fig.get_axes()]
        if len(charts) == 1:
            return charts[0]
        title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
        return {"type": "composite", "title": title, "elements": charts}

    class ChartFormatter(JSONFormatter):
        # NB: not for_type(): matplotlib_inline pops Figure from every formatter when it sets
        # up the inline backend, which would drop ours.
        format_type = Unicode("application/vnd.hutch.chart+json")

        def __call__(self, obj):
            cls = type(obj)
            if not (cls.__module__.startswith("matplotlib") and cls.__name__ == "Figure"):
                return None
            try:
                return extract_figure(obj)
            except Exception as e:
                return {"type": "unknown", "title": "", "elements": [], "error": repr(e)}

    class DataFrameFormatter(JSONFormatter):
        # A pandas DataFrame's columns as lists (E2B's `data`); a big one keeps only its text
        # and HTML, so that the result still fits in one frame.
        format_type = Unicode("application/vnd.hutch.dataframe+json")

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame) or obj.size > 20000:
                return None
            def cell(v):
                if isinstance(v, float) and v != v:
                    return None
                return v.isoformat() if hasattr(v, "isoformat") else v
            try:
                return {str(k): [cell(v) for v in col] for k, col in obj.to_dict(orient="list").items()}
            except Exception:
                return None

    ip = get_ipython()
    df = ip.display_formatter
    for fmt in (ChartFormatter(parent=df), DataFrameFormatter(parent=df)):
        df.formatters[fmt.format_type] = fmt
        df.active_types = list(df.active_types) + [fmt.format_type]
__hutch_setup()
del __hutch_setup
"""
