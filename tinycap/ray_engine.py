"""compute.engine = ray: sample_frames' decoding and clip_embed's embedding as Ray Data pipelines.

`session(workers)` connects to the cluster that RAY_ADDRESS names, or starts a local one with `workers`
CPUs (0: one per core), and reuses a session that is already up (a test's). `map_rows` runs a module-level
function over dict rows in Ray Data `map_batches` tasks; `map_rows_actor` runs a class instead, built once per
actor (a model loaded once). Both stream the result rows back to the driver in `index` order, so the caller
writes the same files, in the same order, as the local engine.

The work itself stays in tinycap.frames / tinycap.clip (the same functions the local engine calls); this
module knows nothing of videos or models. Every row carries an `index` (its position in the input);
failures per item are the caller's business (its function returns a reason instead of raising). A task or
actor whose process dies is run again by Ray (its default retries; tests/test_ray_engine.py kills a worker).

`ray` is imported inside the functions here, not at the top: it is an optional, heavy third-party
dependency (about a second to import) that only compute.engine: ray needs; no tinycap module is imported
lazily.
"""

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 512 * 1024**2  # local cluster: results stream through, nothing is kept in the store
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding this tinycap package


@contextlib.contextmanager
def session(workers):
    """A Ray session for one stage: RAY_ADDRESS's cluster, else a local one with `workers` CPUs (0: all)."""
    import ray  # optional heavy dependency, only for compute.engine: ray (see the module docstring)

    if ray.is_initialized():  # already connected (a test module's session): use it, leave it up
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        # the cluster's nodes run this driver's tinycap (the package folder is uploaded) in their own Python
        ray.init(runtime_env={"py_modules": [str(PACKAGE_ROOT / "tinycap")]}, log_to_driver=False)
        log.info("connected to the Ray cluster at %s: %s", os.environ["RAY_ADDRESS"], ray.cluster_resources())
    else:
        ray.init(**local_cluster_options(workers))
        log.info("started a local Ray cluster with %d CPUs", ray.cluster_resources().get("CPU", 0))
    try:
        yield
    finally:
        ray.shutdown()


def local_cluster_options(workers):
    """ray.init keywords for a local cluster whose workers import tinycap from where this driver does."""
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        "num_cpus": workers or os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": OBJECT_STORE_BYTES,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
    }


def cluster_cpus():
    import ray  # optional heavy dependency, only for compute.engine: ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus():
    import ray  # optional heavy dependency, only for compute.engine: ray

    return int(ray.cluster_resources().get("GPU", 0))


def map_rows(rows, fn, batch_size, concurrency, fn_kwargs=None):
    """fn(batch of rows as numpy columns) -> numpy columns, in Ray tasks; yields result rows in index order.
    Batches hold at most `batch_size` rows, fewer when that leaves a worker idle."""
    import ray  # optional heavy dependency, only for compute.engine: ray

    batch_size = max(1, min(batch_size, -(-len(rows) // concurrency)))
    ds = _dataset(rows, concurrency, batch_size)
    tasks = ray.data.TaskPoolStrategy(size=concurrency)
    ds = ds.map_batches(fn, fn_kwargs=fn_kwargs, batch_size=batch_size, batch_format="numpy", num_cpus=1, compute=tasks)
    yield from _in_order(ds, len(rows))


def map_rows_actor(rows, cls, batch_size, concurrency, num_cpus=1, num_gpus=0, constructor_kwargs=None):
    """cls(**constructor_kwargs)(batch) -> numpy columns, in `concurrency` actors (each builds cls once and
    holds num_cpus CPUs and num_gpus GPUs); yields result rows in index order."""
    import ray  # optional heavy dependency, only for compute.engine: ray (see the module docstring)

    ds = _dataset(rows, concurrency, batch_size)
    ds = ds.map_batches(
        cls,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    yield from _in_order(ds, len(rows))


def _dataset(rows, concurrency, batch_size):
    import ray  # optional heavy dependency, only for compute.engine: ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order (checked again below)
    context.enable_progress_bars = False  # dvc repro's log: one line per stage, not Ray's bars
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # nor its execution plans
    blocks = max(1, min(-(-len(rows) // batch_size), 4 * concurrency))  # enough blocks for every worker
    return ray.data.from_items(rows, override_num_blocks=blocks)


def _in_order(ds, n):
    """Result rows (dicts of one value per column) sorted by `index` as they stream in; all n must come.
    Closing this generator early (a stage that gives up) stops Ray's execution: no thread outlives it."""
    waiting, next_index = {}, 0
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            for i, index in enumerate(batch["index"]):
                waiting[int(index)] = {k: v[i] for k, v in batch.items()}
            while next_index in waiting:
                yield waiting.pop(next_index)
                next_index += 1
    finally:
        batches.close()
    if next_index != n or waiting:
        raise RuntimeError(f"Ray returned {next_index + len(waiting)} of {n} rows")  # a bug here, not bad input
