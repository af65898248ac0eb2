"""Strip the syslog header a log line arrived with, so format parsers see only the message.

HAProxy (and most daemons) send RFC3164 by default, RFC5424 on request, or just `<PRI>` /
nothing (`format short` / `format raw`); the message is the same in every case, so parsers and
ids do not depend on how it was framed.
"""

from __future__ import annotations

import re

# <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]
_RFC5424 = re.compile(r"<\d{1,3}>1 \S+ \S+ \S+ \S+ \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: |$)")
# <PRI>Mmm dd hh:mm:ss [HOSTNAME ]TAG[PID]: MSG ; the timestamp part is absent in `format short`
_RFC3164 = re.compile(
    r"<\d{1,3}>(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?:[^\s:\[]+ )?[^\s:\[]+(?:\[\d+\])?:(?: |$))?"
)
_BOM = "\ufeff"


def syslog_message(line: str) -> str:
    """The message of `line`: the part after any RFC5424 or RFC3164 header, else the line itself."""
    if not line.startswith("<"):
        return line
    m = _RFC5424.match(line)
    if m is not None:
        msg = line[m.end():]
        return msg[1:] if msg.startswith(_BOM) else msg
    m = _RFC3164.match(line)
    return line if m is None else line[m.end():]
