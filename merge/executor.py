"""Execute a merge plan tensor by tensor into a new folder.

Memory holds the inputs of the tensors being merged (two at once on a CPU with
two cores) plus those of the next one, which a reader thread loads meanwhile
(inputs over 32 MB are not loaded at all: the formulas read them a span at a
time). Results are computed in fp32 and rounded once to the output dtype. The
output is built in a hidden temp folder beside `out_dir` and renamed into place
only when every byte is on disk, so an interrupted merge never leaves a folder
that looks done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.lineage.tensors import TORCH_DTYPES
from graft.merge.buffers import BufferPool
from graft.merge.chunks import TensorIn, TensorJob
from graft.merge.errors import (
    MergeCancelled,
    MergeConfigError,
    MergeInputError,
    MergeOutputError,
)
from graft.merge.inputs import FoldedModel, LocalModel, StoredModel, span_tensor
from graft.merge.output import companion_files, lineage_metadata, model_card, write_companions
from graft.merge.plan import MergePlan, TensorRef, TensorTask
from graft.merge.results import MergeProgress, MergeResult, Written
from graft.merge.run_adapters import execute_adapters
from graft.merge.writer import PlannedTensor, ShardWriter
from graft.registry.errors import GraftError
from graft.registry.fsutil import fsync_dir

DEFAULT_SHARD_SIZE = 5 * 2**30


def run(
    plan: MergePlan,
    out_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    rank: int | None = None,
    on_progress: Callable[[MergeProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> MergeResult:
    """Merge into `out_dir` (which must not exist, or be empty). `rank` is the
    rank of a merged adapter (default: the sum of the inputs' ranks)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    with building(out_dir) as work:
        if plan.merges_adapters:
            written = execute_adapters(
                plan, work, seed, _device(device), rank, on_progress, should_cancel
            )
        else:
            written = _execute(
                plan, work, seed, _device(device), shard_size, on_progress, should_cancel
            )
        card = model_card(plan, written.touched, written.note)
        write_companions(work, {**written.companions, "README.md": card})
    return MergeResult(
        out_dir=out_dir,
        files=tuple(written.files),
        tensors=written.tensors,
        bytes_written=written.nbytes,
        touched=tuple(written.touched),
        seconds=time.monotonic() - started,
        rank=written.rank,
        truncation_error=written.truncation_error,
    )


@contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """A hidden work folder beside `out_dir` (which must not exist, or be empty),
    renamed into place once the block finishes: an interrupted write leaves nothing
    that looks finished. Errors writing it become one-line `MergeOutputError`s."""
    _check_out_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out_dir)
        work = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent)
        )
        os.chmod(work, 0o755)  # mkdtemp's 0700 would outlive the rename
    except OSError as e:
        raise _output_error(out_dir, e) from e
    try:
        yield work
        fsync_dir(work)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(work, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and _writing(e, work, out_dir):
            raise _output_error(out_dir, e) from e
        raise


def _writing(e: OSError, work: Path, out_dir: Path) -> bool:
    """Whether `e` came from writing the output (a write to an open file names none)."""
    if isinstance(e, GraftError):  # reading errors are GraftErrors already
        return False
    name = e.filename
    return name is None or any(Path(os.fsdecode(name)).is_relative_to(p) for p in (work, out_dir))


def _output_error(out_dir: Path, e: OSError) -> MergeOutputError:
    return MergeOutputError(
        f"cannot write the merge into {out_dir}: {e.strerror or e}",
        "choose a folder you can write to, on a disk with room for the output",
    )


def _remove_abandoned(out_dir: Path) -> None:
    """Delete the work folders of earlier merges into `out_dir` whose process is
    gone (killed before it could clean up)."""
    for folder in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = folder.name.removeprefix(f".{out_dir.name}.partial-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MergeConfigError(
            f"{out_dir}: already exists and is not an empty folder",
            "choose another --out, or remove it first",
        )


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise MergeConfigError(f"device {name!r} is not a torch device", "use cpu or cuda") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MergeConfigError("--device cuda: no CUDA device is available", "use --device cpu")
    return device


@dataclass
class Loaded:
    """One task's inputs, and the pooled buffers that hold their bytes."""

    base: TensorIn | None
    inputs: list[TensorIn]
    buffers: list[torch.Tensor]


# Tensors larger than this are not read whole: the formulas read them a span at
# a time (an embedding of a big vocabulary would otherwise sit in memory once
# per input), at the price of reading them once per pass.
READ_WHOLE_BELOW = 32 << 20


def _execute(
    plan: MergePlan,
    work: Path,
    seed: int,
    device: torch.device,
    shard_size: int,
    on_progress: Callable[[MergeProgress], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> Written:
    tasks = largest_first(plan.tasks)
    planned = [PlannedTensor(t.name, t.dtype, t.shape, t.nbytes) for t in tasks]
    writer = ShardWriter(work, planned, shard_size, lineage_metadata(plan))
    touched: list[str] = []
    done_bytes = 0
    # A task's buffers are reused once its output is written: until then the
    # output may be one of its inputs (passthrough at scale 1, a copied tensor).
    pool = BufferPool(limit=READ_WHOLE_BELOW)

    def whole(ref: TensorRef, buffers: list[torch.Tensor]) -> torch.Tensor:
        source = plan.sources[ref.source]
        nbytes = source.tensors[ref.name].nbytes
        if not isinstance(source, LocalModel | StoredModel) or not nbytes:
            return source.load(ref.name)
        buffers.append(pool.take(nbytes))
        return source.load(ref.name, buffers[-1])

    def read(ref: TensorRef, buffers: list[torch.Tensor]) -> TensorIn:
        source = plan.sources[ref.source]
        large = source.tensors[ref.name].nbytes > READ_WHOLE_BELOW
        lazy = span_tensor(source, ref.name, device) if large else None
        return lazy if lazy is not None else whole(ref, buffers)

    def load(task: TensorTask) -> Loaded:
        buffers: list[torch.Tensor] = []
        get = whole if task.copy else read  # copied tensors are small and compared whole
        base = get(task.base, buffers) if task.base else None
        inputs = [get(r, buffers) for r in task.inputs]
        if task.vocab:
            assert plan.vocab is not None
            refs = [*([task.base] if task.base else []), *task.inputs]
            laid = plan.vocab.permute(
                [r.source for r in refs], [*([base] if base is not None else []), *inputs], device
            )
            base, inputs = (laid[0], laid[1:]) if base is not None else (None, laid)
        return Loaded(base, inputs, buffers)

    def merge(task: TensorTask, loading: Future[Loaded]) -> tuple[torch.Tensor, bool, Loaded]:
        loaded = loading.result()
        out, changed = _merge_one(plan, task, loaded, seed, device, pool)
        return out, changed, loaded

    # Three stages overlap: the reader loads the next tensor, `workers` threads
    # merge as many tensors at once, and the writer writes the last one merged
    # (outputs go out in the order they were queued in).
    workers = _merge_workers(device)
    reader = ThreadPoolExecutor(1, thread_name_prefix="graft-read")
    merging = ThreadPoolExecutor(workers, thread_name_prefix="graft-merge")
    writing = ThreadPoolExecutor(1, thread_name_prefix="graft-write")
    queued: deque[tuple[TensorTask, Future[tuple[torch.Tensor, bool, Loaded]]]] = deque()
    upcoming = iter(tasks)

    def queue_next() -> None:
        task = next(upcoming, None)
        if task is not None:
            queued.append((task, merging.submit(merge, task, reader.submit(load, task))))

    written: Future[None] | None = None
    writing_buffers: list[torch.Tensor] = []
    try:
        with _intra_op_threads(workers):
            for _ in range(workers + 1):
                queue_next()
            count = len(tasks)
            for done in range(1, count + 1):
                if should_cancel and should_cancel():
                    raise MergeCancelled("merge cancelled", "nothing was written to the output")
                task, merged = queued.popleft()
                out, changed, loaded = merged.result()
                queue_next()
                if written is not None:
                    written.result()
                    pool.give(writing_buffers)
                written = writing.submit(writer.write, task.name, out)
                writing_buffers = loaded.buffers
                del out, loaded
                if changed:
                    touched.append(task.name)
                done_bytes += task.nbytes
                if on_progress:
                    on_progress(MergeProgress(done, count, done_bytes, plan.total_bytes, task.name))
            if written is not None:
                written.result()
        changed_names = set(touched)
        touched = [t.name for t in plan.tasks if t.name in changed_names]  # in the plan's order
        writer.finish({"graft.touched": json.dumps(touched)})
    finally:
        for threads in (reader, merging, writing):  # a cancelled load ends its merge
            threads.shutdown(wait=True, cancel_futures=True)
        writer.close()
    return Written(writer.files, len(plan.tasks), plan.total_bytes, touched, companion_files(plan))


def largest_first(tasks: Sequence[TensorTask]) -> list[TensorTask]:
    """The order to merge and write tensors in: largest first, else the plan's.
    A large tensor merged last (a model's LM head) keeps one worker busy while
    the others have nothing left to do; largest first, they run out of work
    together, on small tensors. Sharded outputs hold the largest in their first
    shards."""
    return sorted(tasks, key=lambda t: t.nbytes, reverse=True)  # stable: ties keep their order


def _merge_workers(device: torch.device) -> int:
    """Tensors merged at once: one per core, up to two (each holds a tensor's
    inputs and fp32 work in memory); one on a GPU, whose kernels run async."""
    return 1 if device.type != "cpu" else min(2, os.cpu_count() or 1)


@contextmanager
def _intra_op_threads(workers: int) -> Iterator[None]:
    """Split torch's intra-op threads among the merge workers for the merge."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _merge_one(
    plan: MergePlan,
    task: TensorTask,
    loaded: Loaded,
    seed: int,
    device: torch.device,
    pool: BufferPool,
) -> tuple[torch.Tensor, bool]:
    """(the output tensor on the CPU in its output dtype, whether it differs
    from the base — or the first input when there is none). The output's memory
    comes from `pool` and joins the task's buffers."""
    base, inputs = loaded.base, loaded.inputs
    reference = base if base is not None else inputs[0]
    if task.copy:
        assert isinstance(reference, torch.Tensor)
        for other, ref in zip(inputs, task.inputs, strict=True):
            if not isinstance(other, torch.Tensor) or not torch.equal(other, reference):
                raise MergeInputError(
                    f"tensor {task.name} ({task.dtype}, not a float) differs in "
                    f"{plan.sources[ref.source].label!r}",
                    "graft copies such tensors only when every input agrees",
                )
        return reference, False
    # Inputs stay in their own dtype; the formula computes in fp32 span by span.
    out_dtype, out = TORCH_DTYPES[task.dtype], None
    if device.type == "cpu":
        loaded.buffers.append(pool.take(task.nbytes))
        out = loaded.buffers[-1].view(out_dtype).reshape(task.shape)
    job = TensorJob(
        name=task.name,
        base=_on(base, device) if base is not None else None,
        inputs=tuple(_on(t, device) for t in inputs),
        input_params=task.input_params,
        params=task.params,
        seed=seed,
        out_dtype=out_dtype,
        out=out,
    )
    out = plan.config.method.merge(job).cpu()
    first = plan.sources[task.inputs[0].source]
    if base is None and isinstance(first, FoldedModel):  # a fold changes what the adapter adapts
        return out, task.inputs[0].name in first.lora.updates
    return out, _differs(out, reference)


def _on(tensor: TensorIn, device: torch.device) -> TensorIn:
    return tensor.to(device) if isinstance(tensor, torch.Tensor) else tensor


def _differs(out: torch.Tensor, reference: TensorIn) -> bool:
    if isinstance(reference, torch.Tensor):
        return not torch.equal(out, reference.to(out.dtype))
    flat = out.reshape(-1)
    step = 1 << 22
    return any(
        not torch.equal(
            flat[i : i + step],
            reference.span(slice(i, min(i + step, flat.numel()))).cpu().to(out.dtype),
        )
        for i in range(0, flat.numel(), step)
    )
