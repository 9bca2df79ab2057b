# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serve an image to a multicast session, or receive one onto disks or into a file. Private to the
collection: not a public API.

``serve(SendSpec)`` and ``receive(ReceiveSpec)`` are what the two modules call: they check the
libraries, plan (check mode) or run, and return the module's result. Every failure is a
FleetcastError of one sentence naming this host (and the device, file or interface);
``SessionFailed`` also carries the report of a session that ran but left nobody complete. While
a session runs, SIGTERM (the progress action cancelling, a job killed) ends it at once: the sender
tells the receivers it aborted, so they stop within one announcement instead of timing out.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .._errors import FleetcastError, TransportError, ValidationError
from .._image import capture as image_capture
from .._image import format as image_format
from .._transport import gcm, netio
from . import sinks, sources

DEFAULT_RESUME_DIR = "/var/lib/fleetcast/resume"


class SessionFailed(TransportError):
    """The session ran, but nobody completed it: the message plus the full report."""

    def __init__(self, message: str, report: Dict[str, Any]):
        super().__init__(message)
        self.report = report


class SessionCancelled(TransportError):
    """SIGTERM arrived while the session ran."""


# -- the one library check ------------------------------------------------------------------------
def missing_library(disks: bool = False) -> Optional[Tuple[str, str]]:
    """(what to install, traceback) for the first library the session cannot do without, or None.
    numpy (the fast paths), zstandard (chunks), AES-GCM (libcrypto or cryptography), and for
    writing partition tables, parted."""
    if netio.NUMPY_IMPORT_ERROR:
        return "numpy (apt: python3-numpy)", netio.NUMPY_IMPORT_ERROR
    if image_format.ZSTD_IMPORT_ERROR:
        return "zstandard (apt: python3-zstandard)", image_format.ZSTD_IMPORT_ERROR
    if getattr(gcm, "_LIBCRYPTO", True) is None:
        try:
            importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
        except ImportError:
            return "cryptography (apt: python3-cryptography)", traceback.format_exc()
    if disks:
        try:
            importlib.import_module("parted")
        except ImportError:
            return "parted (apt: python3-parted)", traceback.format_exc()
    return None


# -- specs: the modules' options, as the engine takes them -----------------------------------------
@dataclass
class SessionSpec:
    """Options both ends share (the doc fragment fleetcast.imaging.multicast_session)."""

    session_key: str
    interface: str = "eth0"
    group: str = "239.255.42.1"
    port: int = 9000
    offload: bool = True
    dscp: int = 0

    @classmethod
    def from_options(cls, options: Dict[str, Any]):
        names = {item.name for item in fields(cls)}
        return cls(**{name: value for name, value in options.items() if name in names and value is not None})

    def where(self) -> str:
        return f"{self.group}:{self.port}"


@dataclass
class SendSpec(SessionSpec):
    image: Optional[str] = None
    source_devices: Optional[List[str]] = None
    chunk_size_mib: int = 4
    compression_level: int = image_capture.LIVE_LEVEL
    spool_dir: Optional[str] = None
    ttl: int = 1
    expected: List[str] = field(default_factory=list)
    min_receivers: int = 1
    max_wait: int = 60
    rate_mbit: int = 0
    receiver_timeout: int = 8
    encrypt: bool = False
    progress_file: Optional[str] = None
    public_key: Optional[str] = None       # send the image only if its signature by this key holds
    signature: Optional[str] = None


@dataclass
class ReceiveSpec(SessionSpec):
    devices: Optional[List[str]] = None
    dest: Optional[str] = None
    grow_last: bool = False
    name: Optional[str] = None
    timeout: int = 30
    window_mib: int = 40
    mode: Any = "0600"
    resume: bool = True
    resume_dir: str = DEFAULT_RESUME_DIR


def host_name(name: Optional[str] = None) -> str:
    return name or socket.gethostname()


# -- cancellation -----------------------------------------------------------------------------------
@contextmanager
def cancellable(what: str) -> Iterator[None]:
    """SIGTERM raises SessionCancelled in the main thread (where the session loop runs), so the
    sender's own clean-up sends "aborted" to the group; the previous handler comes back after."""
    def stop(signum, frame):
        del frame
        raise SessionCancelled(f"{what} was cancelled ({signal.Signals(signum).name})")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:          # not the main thread (an embedding program): no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _vanished(spec: SessionSpec, host: str, why: str) -> Optional[TransportError]:
    """The sentence for a session that failed because its interface went away, if it did."""
    if os.path.exists(os.path.join("/sys/class/net", spec.interface)):
        return None
    return TransportError(f"{host}: interface {spec.interface} vanished during the multicast session on "
                          f"{spec.where()} ({why.rstrip('.')}).")


def _network_failure(err: OSError, spec: SessionSpec, host: str) -> TransportError:
    """An OSError of the sockets, as one sentence: most often the interface went away."""
    why = err.strerror or str(err)
    return _vanished(spec, host, why) or TransportError(
        f"{host}: the network failed during the multicast session on {spec.where()} over {spec.interface}: {why}.")


def _address(spec: SessionSpec, host: str) -> str:
    """The interface's address, once the options both ends share are valid."""
    if not 0 <= spec.dscp <= 63:
        raise ValidationError(f"{host}: dscp {spec.dscp} is not a DSCP class (0 to 63; 8 is CS1, lower effort).")
    try:
        return netio.interface_address(spec.interface)
    except TransportError as err:
        raise TransportError(f"{host}: {err}") from None


def _progress_writer(path: str) -> Callable[[dict], None]:
    def write(progress: dict) -> None:
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".progress-")
        with os.fdopen(handle, "w") as out:
            json.dump(progress, out)
        os.replace(temporary, path)
    return write


# -- sending ----------------------------------------------------------------------------------------
def serve(spec: SendSpec, check_mode: bool = False) -> Dict[str, Any]:
    from .._transport.sender import Sender, SenderConfig

    host = host_name()
    if spec.rate_mbit < 0 or spec.min_receivers < 0 or spec.max_wait < 0:
        raise ValidationError("rate_mbit, min_receivers and max_wait must not be negative.")
    address = _address(spec, host)
    plan = {"interface": spec.interface, "address": address, "group": spec.group, "port": spec.port,
            "expected": spec.expected, "min_receivers": spec.min_receivers, "max_wait": spec.max_wait,
            "rate_mbit": spec.rate_mbit, "encrypt": spec.encrypt}
    chunk_size = spec.chunk_size_mib * 1024 * 1024
    if check_mode:
        plan.update(sources.describe(spec.image, spec.source_devices, chunk_size, spec.public_key, spec.signature))
        return {"changed": False, "plan": plan}
    source = sources.open_source(spec.image, spec.source_devices, chunk_size, spec.compression_level,
                                 spec.spool_dir, spec.public_key, spec.signature)
    config = SenderConfig(
        group=spec.group, port=spec.port, address=address, session_key=spec.session_key.encode("utf-8"),
        ttl=spec.ttl, expected=spec.expected, min_receivers=spec.min_receivers, max_wait=float(spec.max_wait),
        rate_cap=spec.rate_mbit * 125000, receiver_timeout=float(spec.receiver_timeout), encrypt=spec.encrypt,
        offload=None if spec.offload else False, dscp=spec.dscp,
        progress=_progress_writer(spec.progress_file) if spec.progress_file else None)
    try:
        with cancellable(f"The multicast session on {spec.where()} served by {host}"):
            result = Sender(config, source).run()
    except SessionCancelled as err:
        raise SessionCancelled(f"{err}, and every receiver was told that the sender aborted.") from None
    except TransportError as err:
        # the transport's own sentences name the session and, where it matters, the receiver
        raise _vanished(spec, host, str(err)) or err from None
    except OSError as err:
        raise _network_failure(err, spec, host) from None
    finally:
        source.close()
    receivers = [receiver.to_dict() for receiver in result.receivers]
    done = [r for r in receivers if r["state"] == "done" and r["digest_matches"]]
    report = dict(changed=bool(done), receivers=receivers, image_id=result.digest, objects=result.objects,
                  bytes_sent=result.bytes, repair_datagrams=result.repair_datagrams, seconds=result.seconds,
                  flow_holds=result.flow_holds, skipped_chunks=result.skipped_objects, offload=result.gso,
                  encrypted=result.encrypted, rate_cuts_for_loss=result.loss_cuts - result.loss_cuts_undone)
    if not done:
        raise SessionFailed(f"No receiver completed the session that {host} served on {spec.where()}.", report)
    return report


# -- receiving --------------------------------------------------------------------------------------
def _journal_path(spec: ReceiveSpec) -> str:
    names = "+".join(os.path.basename(os.path.realpath(device)) for device in spec.devices or [])
    return os.path.join(spec.resume_dir, names + ".journal")


def _mode(value: Any) -> int:
    return int(value, 8) if isinstance(value, str) else int(value)


def receive_plan(spec: ReceiveSpec, address: str, host: str) -> Dict[str, Any]:
    from .._disk import safety

    plan: Dict[str, Any] = {"interface": spec.interface, "address": address, "group": spec.group,
                            "port": spec.port}
    if spec.devices:
        safety.check_targets(spec.devices)  # together: two names for one disk are refused too
        plan["devices"] = spec.devices
        journal = sinks.Journal(_journal_path(spec)).load() if spec.resume else None
    else:
        directory = os.path.dirname(os.path.abspath(spec.dest))
        if not os.access(directory, os.W_OK):
            raise ValidationError(f"{host}: directory {directory} is not writable, so {spec.dest} cannot be received.")
        plan["dest"] = spec.dest
        journal = sinks.Journal(spec.dest + ".partial.journal").load() if spec.resume else None
    if journal is not None:
        plan["resume"] = {"image_id": journal["image_id"], "chunks": len(journal["entries"])}
    return plan


def receive(spec: ReceiveSpec, check_mode: bool = False) -> Dict[str, Any]:
    from .._transport.receiver import Receiver, ReceiverConfig

    from .._disk import requirements

    started = time.monotonic()
    host = host_name(spec.name)
    # Every library and tool the whole receive needs, in check mode and for real, before the
    # session starts (the layout's own needs are checked again at object 0, before the wipe).
    try:
        requirements.require(("numpy", "zstandard") + (("parted",) if spec.devices else ()),
                             requirements.RESTORE_TOOLS if spec.devices else (), f"receive onto {spec.where()}")
    except FleetcastError as err:
        raise _named(err, host) from None
    address = _address(spec, host)
    if check_mode:
        return {"changed": True, "plan": receive_plan(spec, address, host)}
    netio.return_large_allocations()
    if spec.devices:
        sink: sinks._Sink = sinks.DiskSink(spec.devices, spec.grow_last, host,
                                           sinks.Journal(_journal_path(spec)) if spec.resume else None)
    else:
        sink = sinks.FileSink(spec.dest, _mode(spec.mode), host, spec.resume)
    sink.look_for_resume()
    config = ReceiverConfig(
        group=spec.group, port=spec.port, address=address, session_key=spec.session_key.encode("utf-8"),
        name=spec.name or address, timeout=float(spec.timeout), window_bytes=spec.window_mib * 1024 * 1024,
        offload=None if spec.offload else False, layout_first=True, resume=sink.held, dscp=spec.dscp)
    try:
        with cancellable(f"Receiving the multicast session on {spec.where()}"):
            result = Receiver(config, sink, finish=sink.finish).run()
    except SessionCancelled as err:
        sink.abort()
        raise SessionCancelled(f"{host}: {err}; what was written stays for a resume.") from None
    except FleetcastError as err:
        sink.abort()
        raise (_vanished(spec, host, str(err)) if isinstance(err, TransportError) else None) or _named(err, host) from None
    except OSError as err:
        sink.abort()
        raise _network_failure(err, spec, host) from None
    return dict(
        changed=True, bytes=result.bytes, chunks=sink.chunks, resumed_chunks=sink.resumed,
        repairs_asked=result.fragment_requests + result.object_requests,
        seconds=round(time.monotonic() - started, 3), digest=result.digest, sender=result.sender,
        offload=result.gro, encrypted=result.encrypted, rejoins=result.rejoins)


def _named(err: FleetcastError, host: str) -> FleetcastError:
    """The same kind of error, its sentence starting with this host's name (unless it does already)."""
    message = str(err)
    if message.startswith(host + " ") or message.startswith(host + ":"):
        return err
    named = type(err).__new__(type(err))
    Exception.__init__(named, f"{host}: {message}")
    return named
