# The receiver's control state (control.ReceiverControl), driven with control datagrams laid out
# by the wire module as a sender would and a fake clock: no sockets, no threads, no sleeping.
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import TransportError
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.control import (
    DATA_SILENCE, REJOIN_AFTER, REJOIN_MAX, ReceiverControl)
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.receiver import ReceiverConfig

KEY = b"session key"
SENDER = ("10.0.0.1", 40000)
GROUP, PORT = "239.255.1.1", 9000


class Sender:
    """What a sender of session `session_id` would put on the wire."""

    def __init__(self, session_id=77, key=KEY):
        self.keys = wire.SessionKeys.derive(key, session_id)
        self.seq = 0

    def message(self, kind, body, seq=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        return wire.pack_control(self.keys, kind, seq, body)

    def announce(self, known=3, sent=0, final=True):
        return self.message(wire.ANNOUNCE, wire.ANNOUNCE_BODY.pack(known, sent, final, 0, wire.PAYLOAD, 0,
                                                                   wire.image_id_field(b"")))

    def welcome(self, receiver_id, nonce):
        return self.message(wire.WELCOME, wire.WELCOME_BODY.pack(receiver_id, nonce))


def _control(timeout=30.0, now=0.0):
    config = ReceiverConfig(GROUP, PORT, "10.0.0.2", KEY, name="pc1", timeout=timeout, window_bytes=8 << 20)
    return ReceiverControl(config, lambda *args: None, now)


def _sent(control, keys):
    """(kind, body, destinations) of every queued datagram, opened with `keys`."""
    sent = []
    for datagram, destinations in control.take_outbox():
        opened = wire.open_control(keys, datagram)
        assert opened is not None, "every datagram a receiver sends is authenticated"
        sent.append((opened[0], opened[3], destinations))
    return sent


def _joined(now=0.0, sender=None):
    sender = sender or Sender()
    control = _control(now=now)
    control.datagram(sender.announce(), SENDER, now)
    ((kind, body, _to),) = _sent(control, sender.keys)
    receiver_id, nonce = wire.JOIN_BODY.unpack_from(body)
    control.datagram(sender.welcome(receiver_id, nonce), SENDER, now)
    assert control.keys is not None
    return control, sender


def test_an_authentic_announcement_is_answered_with_a_join_and_only_the_echoing_welcome_joins():
    sender, control = Sender(), _control()
    control.datagram(Sender(key=b"another key").announce(), SENDER, 0.0)    # another session key
    control.datagram(sender.announce()[:-1] + b"x", SENDER, 0.0)           # forged tag
    assert control.take_outbox() == [] and not control.candidates
    control.datagram(sender.announce(), SENDER, 0.0)
    ((kind, body, destinations),) = _sent(control, sender.keys)
    assert kind == wire.JOIN and destinations == [SENDER, (GROUP, PORT + 1)]
    receiver_id, nonce = wire.JOIN_BODY.unpack_from(body)
    assert body[wire.JOIN_BODY.size:] == b"pc1" and receiver_id == control.receiver_id
    control.datagram(sender.announce(), SENDER, 0.1)                       # asked 0.1 s ago: no second JOIN
    assert control.take_outbox() == []
    for wrong in (sender.welcome(receiver_id, nonce ^ 1), sender.welcome(receiver_id + 1, nonce),
                  Sender(session_id=78).welcome(receiver_id, nonce)):      # a replay of another session's
        control.datagram(wrong, SENDER, 0.2)
        assert control.keys is None and control.core is None
    control.datagram(sender.welcome(receiver_id, nonce), SENDER, 0.3)
    assert control.keys == sender.keys and control.sender == SENDER
    assert control.core.known == 3 and control.core.final_count == 3      # the announcement it heard first
    assert not control.candidates


def test_the_senders_messages_pass_its_replay_window_and_other_sessions_are_ignored():
    control, sender = _joined()
    meta = sender.message(wire.META, wire.META_HEAD.pack(0, 1) + wire.META_ENTRY.pack(1000, b"t" * 16))
    control.datagram(meta, SENDER, 1.0)
    assert control.core.meta == {0: (1000, b"t" * 16)} and control.last_from_sender == 1.0
    control.datagram(meta, SENDER, 2.0)                                     # the same datagram again
    assert control.last_from_sender == 1.0
    control.datagram(Sender(session_id=78).announce(known=9), SENDER, 3.0)
    assert control.core.known == 3 and control.last_from_sender == 1.0


def test_no_session_within_the_timeout_says_why():
    control = _control(timeout=5.0)
    assert control.tick(4.9) == (False, True)                              # silent: membership again
    with pytest.raises(TransportError, match="No authenticated multicast session on 239.255.1.1:9000 within 5 s"):
        control.tick(5.1)
    other = _control(timeout=5.0)
    foreign = bytearray(Sender().announce())
    foreign[1] = wire.VERSION + 1                                          # a sender of another release
    other.datagram(bytes(foreign), SENDER, 1.0)
    with pytest.raises(TransportError, match=f"speaks wire version {wire.VERSION + 1}"):
        other.tick(5.1)


def test_membership_is_reported_again_after_silence_less_and_less_often():
    control = _control(timeout=100.0)
    renewals = [now / 10 for now in range(0, 400) if control.tick(now / 10).renew]
    gaps = [round(later - earlier, 1) for earlier, later in zip(renewals, renewals[1:])]
    assert renewals[0] == pytest.approx(REJOIN_AFTER + 0.1)
    assert gaps[:4] == [1.1, 2.1, 4.1, 8.1] and max(gaps) <= REJOIN_MAX + 0.1
    control.heard_something(40.0)                                          # the group reaches us again
    assert not control.tick(40.4).renew and control.tick(40.6).renew


def test_a_silent_sender_an_abort_and_an_early_end_each_end_the_receive_with_their_reason():
    control, sender = _joined(now=0.0)
    control.tick(29.0)
    with pytest.raises(TransportError, match="Sender 10.0.0.1 went silent on 239.255.1.1:9000 for 30 s with 0 of 3"):
        control.tick(30.5)
    control, sender = _joined()
    control.datagram(sender.message(wire.END, wire.END_BODY.pack(wire.END_ABORTED)), SENDER, 1.0)
    with pytest.raises(TransportError, match="aborted the session .* with 0 of 3 objects"):
        control.tick(1.0)
    control, sender = _joined()
    control.datagram(sender.message(wire.END, wire.END_BODY.pack(wire.END_COMPLETE)), SENDER, 1.0)
    with pytest.raises(TransportError, match="ended the session .* before this receiver had every object"):
        control.tick(1.0)


def test_control_without_data_is_a_path_that_drops_data_and_says_so():
    control, sender = _joined()
    for now in range(1, 8):                          # announcements keep coming, data never does
        control.datagram(sender.announce(sent=3), SENDER, float(now))
        if now <= DATA_SILENCE:
            control.tick(float(now))
    with pytest.raises(TransportError, match="none of the data it sent reached this host .* smaller MTU"):
        control.tick(7.0)


def test_status_goes_out_every_25_ms_or_so_and_at_once_when_due():
    control, sender = _joined()
    control.take_outbox()
    times = [step / 1000 for step in range(0, 1000)]
    statuses = 0
    for now in times:
        control.tick(now)
        statuses += sum(1 for kind, _body, _to in _sent(control, sender.keys) if kind == wire.STATUS)
    assert 26 <= statuses <= 80                      # 12.5-37.5 ms apart, randomised
    control.core.status_due = True
    control.tick(1.0001)
    ((kind, body, destinations),) = _sent(control, sender.keys)
    assert kind == wire.STATUS and destinations == [SENDER, (GROUP, PORT + 1)]
    head = wire.STATUS_HEAD.unpack_from(body)
    assert head[0] == control.receiver_id and head[6] > 0                  # it offers room


def test_complete_done_and_leave():
    control, sender = _joined()
    control.core.delivered = 3
    assert control.tick(1.0).complete
    control.done(b"d" * 32)
    ((kind, body, _to),) = _sent(control, sender.keys)
    assert kind == wire.DONE and wire.DONE_BODY.unpack_from(body) == (control.receiver_id, 3, b"d" * 32)
    control.datagram(sender.message(wire.DONE_ACK, wire.DONE_ACK_BODY.pack(control.receiver_id + 1)), SENDER, 1.1)
    assert not control.done_acked                                          # another receiver's
    control.datagram(sender.message(wire.DONE_ACK, wire.DONE_ACK_BODY.pack(control.receiver_id)), SENDER, 1.2)
    assert control.done_acked
    control.leave("disk full on /dev/sda")
    sent = _sent(control, sender.keys)
    assert [kind for kind, _body, _to in sent] == [wire.LEAVE] * 3
    assert sent[0][1][wire.LEAVE_BODY.size:] == b"disk full on /dev/sda"
    unjoined = _control()
    unjoined.leave("never joined")
    assert unjoined.take_outbox() == []
