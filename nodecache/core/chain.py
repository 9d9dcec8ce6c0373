"""The plugin chain a cache miss runs through, in CoreDNS's order (sans I/O).

CoreDNS fixes the order of its plugins in ``plugin.cfg`` whatever order a
Corefile lists them in. For the plugins that answer, that order is
:data:`nodecache.core.stages.ORDER`: ``dns64`` runs before ``cache``;
``cache`` wraps ``rewrite``, ``template``, ``hosts`` and ``forward``, so what
those answer is cached under the client's name; ``whoami`` comes after
``forward`` and only sees what ``forward`` hands on (names outside its FROM
zone or in its ``except`` list).

Rules of this module:

1. A cache hit never reaches the chain: ``QueryHandler`` looks the cache up
   first and calls :meth:`Chain.resolve` only on a miss.
2. A stage takes a :class:`Request` and returns one :data:`Step`: ``None``
   (hand it on, CoreDNS's ``NextOrFailure``), an :class:`Answer` (a message it
   wrote), a :class:`Failure` (an RCODE it returned without writing, which
   the server turns into an empty reply, never cached), or a
   :class:`Rewritten` request with the rules that map the reply back.
3. When no stage answers, the query is forwarded (the handler checks the FROM
   zone) with the request as the last rewrite left it, and the reply is
   mapped back with :meth:`Resolution.revert` before it is cached. When
   forward does not take the name, the stages after it run; when none
   answers, the client gets SERVFAIL (CoreDNS's "no next plugin").
4. dns64 is not a stage here: it wraps the whole AAAA answer (see
   :mod:`nodecache.core.stages.dns64`).
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # imported where used: only blocks with answering stages load dnspython
    import dns.message
    import dns.rrset

_HEADER = struct.Struct("!HHHHHH")  # RFC 1035 section 4.1.1
_RR_HEAD = struct.Struct("!HHI")  # TYPE, CLASS, TTL (section 4.1.3)
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Request:
    """One question as a stage sees it."""

    #: The question name, lower case, absolute text (``"www.example.org."``).
    name: str
    qtype: int
    qclass: int
    #: The question name as the client wrote it (case kept).
    qname: str = ""
    #: The client's address and port; "" and 0 when unknown.
    remote: str = ""
    port: int = 0
    #: ``"udp"`` or ``"tcp"``.
    proto: str = "udp"
    #: 1 for an IPv4 client, 2 for IPv6 (CoreDNS's ``state.Family()``).
    family: int = 1
    #: The question section as the client sent it (QNAME, QTYPE, QCLASS), b"" unknown.
    question: bytes = b""
    #: The client's EDNS options (its OPT RDATA), which forward passes on.
    options: bytes = b""
    #: The query has an OPT record.
    edns: bool = False

    def renamed(self, name: str) -> Request:
        return replace(self, name=name.lower(), qname=name, question=b"")


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply a stage wrote (AA set, as CoreDNS's plugins do)."""

    message: dns.message.Message
    #: Names whose records (of the question's type) the reply is to get appended,
    #: looked up through the whole server (template's CNAME targets).
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failure:
    """An RCODE a stage returned without writing: the client gets it with no records."""

    rcode: int


#: Maps one record of a reply back for the client (CoreDNS's ResponseRule).
RecordRule = Callable[["dns.rrset.RRset"], "dns.rrset.RRset"]


@dataclass(frozen=True, slots=True)
class RcodeMap:
    """A reply rule on the RCODE: ``old`` becomes ``new`` (rewrite's rcode rule)."""

    old: int
    new: int


@dataclass(frozen=True, slots=True)
class Rewritten:
    """The request rewritten; ``rules`` apply to the reply (records, RCODE), last rule first."""

    request: Request
    rules: tuple[RecordRule | RcodeMap, ...] = ()
    #: A stop rule applied: failures of the later stages become written replies.
    writes_failures: bool = False


Step = Answer | Failure | Rewritten | None


class Stage(Protocol):
    """One answering plugin of one server block."""

    #: The plugin's name, for the ``plugin`` label of responses.
    name: str

    def serve(self, request: Request) -> Step: ...


@dataclass(slots=True)
class Resolution:
    """What the chain made of a miss."""

    #: The request as forward must see it (after rewrites).
    request: Request
    #: The client's own question, which the reply carries back.
    original: Request
    #: A local answer as wire bytes (ID 0), already mapped back unless it has
    #: ``targets``; None to forward.
    answer: bytes | None = None
    #: A local failure RCODE (not cached); None otherwise.
    rcode: int | None = None
    #: The plugin that answered.
    plugin: str = ""
    #: Look these names up and append their answers before caching (see :class:`Answer`).
    targets: tuple[str, ...] = ()
    rules: list[RecordRule | RcodeMap] = field(default_factory=list)
    #: See :attr:`Rewritten.writes_failures`.
    writes_failures: bool = False

    @property
    def rewritten(self) -> bool:
        return self.request is not self.original or bool(self.rules)

    def revert(self, data: bytes) -> bytes:
        """An answer to the rewritten question, as the client must see it."""
        if not self.rewritten:
            return data
        import dns.exception  # noqa: PLC0415
        import dns.message  # noqa: PLC0415
        try:
            return self.revert_message(dns.message.from_wire(data)).to_wire()
        except dns.exception.DNSException as exc:
            raise ValueError(f"cannot map the answer back: {exc}") from None

    def render(self, message: dns.message.Message) -> bytes:
        """A stage's reply as wire bytes, mapped back for the client."""
        if self.rewritten:
            return self.revert_message(message).to_wire()
        question = self.original.question
        if not question:
            message.question = [question_of(self.original)]
            return message.to_wire()
        # The client's question as it sent it, the records uncompressed (RFC 1035
        # section 4.1.4 makes compression optional): far cheaper than dnspython's renderer.
        counts = []
        records = []
        for section in (message.answer, message.authority, message.additional):
            count = 0
            for rrset in section:
                owner = rrset.name.to_wire()
                assert owner is not None
                head = owner + _RR_HEAD.pack(rrset.rdtype, rrset.rdclass, rrset.ttl)
                for rdata in rrset:
                    data = rdata.to_wire()
                    records.append(head + _U16.pack(len(data)) + data)
                    count += 1
            counts.append(count)
        return _HEADER.pack(0, message.flags | message.rcode(), 1, *counts) + question \
            + b"".join(records)

    def revert_message(self, message: dns.message.Message) -> dns.message.Message:
        original = self.original
        message.question = [question_of(original)]
        if not self.rules:
            return message
        import dns.rcode  # noqa: PLC0415
        records = [rule for rule in reversed(self.rules) if not isinstance(rule, RcodeMap)]
        rcodes = [rule for rule in reversed(self.rules) if isinstance(rule, RcodeMap)]
        count = 0 if message.opt is None else 1
        for section in (message.answer, message.authority, message.additional):
            for index, rrset in enumerate(section):
                count += len(rrset)
                for record in records:
                    rrset = record(rrset)
                section[index] = rrset
        # CoreDNS runs the rcode rules once per record (OPT included): with none, never.
        for _ in range(count if rcodes else 0):
            for rcode in rcodes:
                if message.rcode() == rcode.old:
                    message.set_rcode(dns.rcode.Rcode.make(rcode.new))
        return message


class Chain:
    """The answering stages of one server block, in CoreDNS's order."""

    def __init__(self, stages: Sequence[Stage], tail: Sequence[Stage] = ()) -> None:
        #: The stages before forward.
        self.stages = tuple(stages)
        #: The stages after forward (whoami), for names forward hands on.
        self.tail = tuple(tail)

    def __bool__(self) -> bool:
        return bool(self.stages or self.tail)

    def resolve(self, request: Request) -> Resolution:
        """Run the stages before forward; a Resolution without answer is to be forwarded."""
        return self._run(self.stages, Resolution(request, request))

    def after_forward(self, resolution: Resolution) -> Resolution:
        """Run the stages after forward, for a name forward does not take."""
        return self._run(self.tail, resolution)

    @staticmethod
    def _run(stages: Sequence[Stage], resolution: Resolution) -> Resolution:
        for stage in stages:
            step = stage.serve(resolution.request)
            if step is None:
                continue
            if isinstance(step, Rewritten):
                resolution.request = step.request
                resolution.rules.extend(step.rules)
                resolution.writes_failures = step.writes_failures
                continue
            resolution.plugin = stage.name
            if isinstance(step, Failure):
                if resolution.writes_failures and step.rcode in _UNWRITTEN:
                    resolution.answer = resolution.render(_failure_reply(resolution.request,
                                                                         step.rcode))
                    return resolution
                resolution.rcode = step.rcode
            elif step.targets:
                # mapped back once the targets' records are in (they are the stage's)
                step.message.question = [question_of(resolution.request)]
                resolution.answer = step.message.to_wire()
                resolution.targets = step.targets
            else:
                resolution.answer = resolution.render(step.message)
            return resolution
        return resolution


def reply_to(request: Request, rcode: int = 0) -> dns.message.Message:
    """An empty authoritative reply to ``request`` (miekg's ``SetReply`` + AA), ID 0.

    Its question section is left empty: :meth:`Resolution.render` puts the
    client's in.
    """
    import dns.flags  # noqa: PLC0415
    import dns.message  # noqa: PLC0415
    import dns.rcode  # noqa: PLC0415
    message = dns.message.Message(id=0)
    message.flags = dns.flags.QR | dns.flags.AA | dns.flags.RD
    message.set_rcode(dns.rcode.Rcode.make(rcode))
    return message


#: The RCODEs a CoreDNS plugin returns without writing (``plugin.ClientWrite``):
#: FORMERR, SERVFAIL, NOTIMP, REFUSED.
_UNWRITTEN = frozenset((1, 2, 4, 5))


def _failure_reply(request: Request, rcode: int) -> dns.message.Message:
    """The reply CoreDNS's rewrite writes for a failure: miekg's ``SetRcode`` (no AA),
    with an OPT when the query has one (``SizeAndDo``); the server sets its own OPT."""
    import dns.flags  # noqa: PLC0415
    message = reply_to(request, rcode)
    message.flags &= ~dns.flags.AA
    if request.edns:
        message.use_edns(0)
    return message


def question_of(request: Request) -> dns.rrset.RRset:
    """The question section entry of ``request`` (the name as the client wrote it)."""
    import dns.name  # noqa: PLC0415
    import dns.rdataclass  # noqa: PLC0415
    import dns.rdatatype  # noqa: PLC0415
    import dns.rrset  # noqa: PLC0415
    return dns.rrset.RRset(dns.name.from_text(request.qname or request.name),
                           dns.rdataclass.RdataClass.make(request.qclass),
                           dns.rdatatype.RdataType.make(request.qtype))


def append_answers(answer: bytes, found: bytes) -> bytes:
    """``answer`` with the answer records (and TC flag) of ``found`` appended."""
    import dns.flags  # noqa: PLC0415
    import dns.message  # noqa: PLC0415
    message = dns.message.from_wire(answer)
    extra = dns.message.from_wire(found)
    message.answer.extend(extra.answer)
    message.flags |= extra.flags & dns.flags.TC
    return message.to_wire()


def is_under(name: str, zone: str) -> bool:
    """True if text name ``name`` equals or is below ``zone`` (both lower case, absolute)."""
    return zone == "." or name == zone or name.endswith("." + zone)


def longest_zone(name: str, zones: Sequence[str]) -> str | None:
    """CoreDNS's ``plugin.Zones.Matches``: the longest of ``zones`` that ``name`` is under."""
    best = None
    for zone in zones:
        if is_under(name, zone) and (best is None or len(zone) > len(best)):
            best = zone
    return best

