"""The caption stage: its config, the captioner replica pool (Ray Serve) and the shard tasks' side of it.

Two layouts (``caption.placement``):

- ``actors`` (GPU clusters): a Ray Serve application of ``caption.concurrency`` replicas, each
  holding one captioner on its GPU. Every shard task sends its decoded middle frames to the
  application as they are decoded, ``caption.frames_per_request`` to a request. A replica,
  whenever its captioner is free, takes every frame waiting for it, from however many shard tasks
  sent them, into one ``generate`` call of up to ``caption.batch_size`` frames (an idle replica
  waits at most ``caption.batch_wait_s`` for a batch to fill). Serve routes each request to a
  live replica, restarts a replica whose process or node died (wherever the cluster has room, a
  node that joins later included), and with ``caption.max_concurrency`` above ``concurrency``
  adds replicas while frames queue. Requests in flight on a replica that dies fail with
  ``RayActorError``: the shard task sends them again (``caption.max_attempts`` in all), so they
  are captioned by another replica. Each caption comes back in the reply to the request that
  carried its frame, in the frame's place, so it can only ever be attached to that frame.
- ``inline`` (CPU-only clusters): each shard task loads the captioner itself, once per worker
  process, and captions its own frames in batches of ``caption.batch_size``.

Backpressure: a shard task holds at most ``caption.max_in_flight_per_task`` records between
decode and write (it decodes the next clip only below that), and a replica takes at most
``caption.batch_size`` requests at once (``max_ongoing_requests``); the rest wait in the callers'
request routers. So the frames in flight are bounded by the number of shard tasks and replicas,
never by the size of the run.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import Any, Iterable, Iterator

from caption.protocol import Captioner, DecodeSettings
from pipeline.record import ClipRecord

logger = logging.getLogger(__name__)

DEPLOYMENT = "CaptionReplica"
# Errors that mean "the replica holding this request is gone", never "this frame is bad".
_LOST_REPLICA = ("RayActorError", "ActorDiedError", "ActorUnavailableError")


@dataclasses.dataclass(kw_only=True, frozen=True)
class CaptionConfig:
    """The captioner and where it runs. ``model = ""`` turns the caption stage off."""

    model: str = ""  # "hf:<path or hub id>" | "ofa:<checkpoint>" | "py:<module>:<Class>" | "" (off)
    device: str = "auto"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra keyword arguments of the captioner
    batch_size: int = 32  # frames per generate() call: 128 on an H100 (OFA-base 568 img/s vs 277 at 32)
    # actors: how long an idle replica waits for a batch to fill (a busy one takes what waits)
    batch_wait_s: float = 0.1
    # "actors": a Ray Serve pool of ``concurrency`` replicas any shard task sends frames to (the GPU
    # layout); "inline": each shard task loads the captioner itself (CPU-only clusters: no frame
    # leaves its process); "auto": actors when num_gpus > 0, else inline.
    placement: str = "auto"
    concurrency: int = 1  # replicas (one per GPU)
    max_concurrency: int = 0  # > concurrency: Serve adds replicas up to this while frames queue; 0: fixed
    num_gpus: float = 0.0  # per replica
    # Logical CPUs per replica. 0 by default: a replica that restarts after a crash then never waits
    # for a CPU held by shard tasks that are themselves waiting for its captions (its GPU is what
    # it needs). Set it when caption nodes run no shard tasks (writer.resources keeps them apart).
    num_cpus: float = 0.0
    # Custom Ray resources a node must offer to host a replica, e.g. {"captioner": 1}.
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    frames_per_request: int = 16  # actors: frames a shard task sends in one request (many requests fill a batch)
    max_in_flight_per_task: int = 64  # records one shard task holds between decode and write
    max_attempts: int = 3  # sends of one frame when the replicas holding it die; then its row fails
    decode: DecodeSettings = dataclasses.field(default_factory=DecodeSettings)

    def __post_init__(self) -> None:
        if self.placement not in ("auto", "actors", "inline"):
            raise ValueError(f"caption.placement={self.placement!r} must be auto, actors or inline")
        for name in ("concurrency", "batch_size", "frames_per_request", "max_in_flight_per_task", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"caption.{name}={getattr(self, name)} must be >= 1")
        if self.max_concurrency and self.max_concurrency < self.concurrency:
            raise ValueError(f"caption.max_concurrency={self.max_concurrency} must be 0 (a fixed pool) or at least "
                             f"caption.concurrency={self.concurrency}")
        if not self.batch_wait_s >= 0:
            raise ValueError(f"caption.batch_wait_s={self.batch_wait_s} must be >= 0 seconds")

    @property
    def uses_actors(self) -> bool:
        return bool(self.model) and (self.placement == "actors" or (self.placement == "auto" and self.num_gpus > 0))

    def replica_demand(self) -> dict[str, float]:
        """What one replica asks of a node."""
        return {k: v for k, v in {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}.items() if v}


def load(cfg: CaptionConfig) -> tuple[Captioner, dict[str, Any]]:
    """The captioner of ``cfg`` and its ``caption_info`` (model spec, checkpoint hash, decode settings)."""
    from caption.registry import load_captioner

    captioner = load_captioner(cfg.model, device=cfg.device, settings=cfg.decode, batch_size=cfg.batch_size,
                               **cfg.options)
    info = json.loads(json.dumps({"model": cfg.model, **captioner.describe()}, sort_keys=True, default=str))
    return captioner, info


def caption_jpegs(captioner: Captioner, jpgs: list[bytes]) -> list[str]:
    """One caption per JPEG, stripped; the images are opened here and decoded by the captioner."""
    from PIL import Image

    texts = captioner.generate([Image.open(io.BytesIO(j)) for j in jpgs])
    if len(texts) != len(jpgs):
        raise RuntimeError(f"the captioner returned {len(texts)} captions for {len(jpgs)} images")
    return [t.strip() for t in texts]


def set_caption(rec: ClipRecord, text: str, seconds: float, info: dict[str, Any]) -> None:
    rec.caption, rec.caption_s, rec.caption_info = text, seconds, info
    if not text:
        rec.fail("empty caption: the captioner returned no text for the middle frame")


OFF_INFO = {"model": "", "note": "caption stage off (caption.model is empty)"}


def no_captions(records: Iterable[ClipRecord]) -> Iterator[ClipRecord]:
    """The caption step when captioning is off: records say so in their metadata."""
    for rec in records:
        rec.caption_info = OFF_INFO
        yield rec


# ---------------------------------------------------------------------------------------------
# inline: the shard task's own captioner

_INLINE: dict[str, tuple[Captioner, dict[str, Any]]] = {}


def inline_captions(records: Iterable[ClipRecord], cfg: CaptionConfig) -> Iterator[ClipRecord]:
    """Caption in the shard task, ``cfg.batch_size`` frames per call; records come out in order.

    The captioner is loaded once per worker process and kept for later shards.
    """
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if key not in _INLINE:
        _INLINE[key] = load(cfg)
    captioner, info = _INLINE[key]
    held: list[ClipRecord] = []

    def flush() -> Iterator[ClipRecord]:
        todo = [r for r in held if r.ok]
        if todo:
            t0 = time.perf_counter()
            texts = caption_jpegs(captioner, [r.jpg for r in todo])
            per = (time.perf_counter() - t0) / len(todo)
            for rec, text in zip(todo, texts):
                set_caption(rec, text, per, info)
        yield from held
        held.clear()

    for rec in records:
        held.append(rec)
        if sum(r.ok for r in held) >= cfg.batch_size:
            yield from flush()
    yield from flush()


# ---------------------------------------------------------------------------------------------
# actors: the shard task's side of the Serve application (the replica is pipeline/caption_replica.py)


@dataclasses.dataclass(eq=False)
class _Request:
    """Frames of one shard task sent together: one Serve request, answered with one caption each."""

    recs: list[ClipRecord]
    response: Any = None  # the DeploymentResponse of the latest send; None once settled
    attempts: int = 0


_HANDLES: dict[str, tuple[Any, dict[str, Any]]] = {}


def _handle(app: str, cfg: CaptionConfig) -> tuple[Any, dict[str, Any]]:
    """(deployment handle, caption_info), once per worker process and application."""
    key = f"{app}\n{json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)}"
    if key not in _HANDLES:
        from ray import serve

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the handle's router logs at INFO
        handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app)
        _HANDLES[key] = handle, handle.describe.remote().result()
    return _HANDLES[key]


def _lost_replica(exc: BaseException) -> bool:
    return any(t.__name__ in _LOST_REPLICA for t in type(exc).__mro__)


def service_captions(records: Iterable[ClipRecord], cfg: CaptionConfig, app: str) -> Iterator[ClipRecord]:
    """Caption through the Serve application ``app``; records come out in order, each with its own caption.

    Frames go out ``cfg.frames_per_request`` at a time (fewer when the task must wait, and at its
    end): one request per frame would cost the replicas more CPU in request handling than the
    captioner spends on small images. The next clips decode while the service works; finished
    records at the head of the queue leave at once, and at most ``cfg.max_in_flight_per_task``
    records are held. A request lost with its replica is sent again, up to ``cfg.max_attempts``
    sends in all; then its rows fail with the reason.
    """
    import uuid

    handle, info = _handle(app, cfg)
    task = uuid.uuid4().hex[:12]  # lets the replicas count how many tasks share a batch
    per_request = min(cfg.frames_per_request, cfg.batch_size)
    queue: collections.deque[ClipRecord] = collections.deque()  # every record, in row order
    waiting: dict[int, _Request | None] = {}  # id(record) -> its request (None: not sent yet), until captioned
    unsent: list[ClipRecord] = []

    def send(req: _Request) -> None:
        req.response = handle.caption.remote((task, [r.jpg for r in req.recs]))
        req.attempts += 1

    def send_unsent() -> None:
        if unsent:
            req = _Request(list(unsent))
            for rec in unsent:
                waiting[id(rec)] = req
            send(req)
            unsent.clear()

    def settle(req: _Request, wait: bool) -> bool:
        """Whether ``req`` is answered (or given up); with ``wait``, blocks until it is."""
        while req.response is not None:
            try:
                answers = req.response.result(timeout_s=30.0 if wait else 0.0)
            except TimeoutError:
                if not wait:
                    return False
                continue
            except Exception as exc:  # noqa: BLE001 - only a lost replica is retried; the rest re-raise
                if not _lost_replica(exc):
                    raise
                if req.attempts >= cfg.max_attempts:
                    req.response = None
                    for rec in req.recs:
                        rec.fail(f"caption: the replica holding this frame died, {req.attempts} times "
                                 f"(caption.max_attempts); last: {type(exc).__name__}")
                    break
                logger.warning("a caption replica was lost with %d frame(s) of this task in flight (%s); "
                               "sending them again", len(req.recs), type(exc).__name__)
                send(req)
                resend_lost(req)
                if not wait:
                    return False
                continue
            req.response = None
            for rec, (text, seconds) in zip(req.recs, answers, strict=True):
                set_caption(rec, text, seconds, info)
        for rec in req.recs:
            waiting.pop(id(rec), None)
        return True

    def resend_lost(skip: _Request) -> None:
        """A replica died: requests it held fail together, so send them again now, not when they reach the head."""
        for other in {id(r): r for r in waiting.values() if r is not None}.values():
            if other is not skip and other.response is not None:
                settle(other, wait=False)

    def final(rec: ClipRecord, wait: bool) -> bool:
        """Whether ``rec`` has its caption (or its failure); with ``wait``, sends and blocks until it has."""
        if id(rec) not in waiting:
            return True
        if waiting[id(rec)] is None:  # not sent yet
            if not wait:
                return False
            send_unsent()
        return settle(waiting[id(rec)], wait)

    def ready(wait: bool) -> Iterator[ClipRecord]:
        """The records at the head of the queue that are final (with ``wait``: all of them, in order)."""
        while queue and final(queue[0], wait):
            yield queue.popleft()

    for rec in records:
        queue.append(rec)
        if rec.ok:
            unsent.append(rec)
            waiting[id(rec)] = None  # held until its request is made
            if len(unsent) >= per_request:
                send_unsent()
        yield from ready(wait=False)
        while len(queue) >= cfg.max_in_flight_per_task:  # backpressure: decode no further until the head is done
            final(queue[0], wait=True)
            yield from ready(wait=False)
    yield from ready(wait=True)


@dataclasses.dataclass(kw_only=True, frozen=True)
class ServiceState:
    """How the caption application stands: replicas running, wanted, and Serve's status."""

    running: int
    wanted: int
    status: str  # Serve's deployment status (UPDATING, HEALTHY, UNHEALTHY, DEPLOY_FAILED, ...)
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "DEPLOY_FAILED"

    def reason(self) -> str:
        """The last line of Serve's message: the replica constructor's own error, when it failed."""
        lines = [ln.strip() for ln in self.message.replace("\x1b", "").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else self.status


def service_state(app: str, cfg: CaptionConfig) -> ServiceState:
    from ray import serve

    status = serve.status().applications.get(app)
    dep = status.deployments.get(DEPLOYMENT) if status else None
    if dep is None:
        return ServiceState(running=0, wanted=cfg.concurrency, status="NOT_DEPLOYED", message="")
    running = int(dep.replica_states.get("RUNNING", 0))
    wanted = max(cfg.concurrency, sum(int(n) for n in dep.replica_states.values()))
    return ServiceState(running=running, wanted=wanted, status=getattr(dep.status, "value", str(dep.status)),
                        message=dep.message or "")


def teardown(app: str, wait: bool = True) -> None:
    """Delete the caption application (its replicas free their GPUs). Serve's own controller stays:
    it holds no resources, and other jobs on the cluster may use it."""
    from ray import serve

    serve.delete(app, _blocking=wait)


def app_name(output_dir: str, prefix: str) -> str:
    """The Serve application of the run writing ``output_dir``: a rerun finds (and replaces) its own."""
    return "clipvip-caption-" + hashlib.blake2b(f"{output_dir.rstrip('/')}\n{prefix}".encode(),
                                                digest_size=5).hexdigest()
