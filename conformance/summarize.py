#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite fuzzingclient report.

Usage: summarize.py [--max-message-size N] [--expect-all] REPORT_DIR [AGENT]

Reads REPORT_DIR/index.json (and the per-case JSON files next to it), prints
the number of cases per result for each section 1-13 and in total, then the
details of every case in sections 1-11 whose result is not OK, NON-STRICT or
INFORMATIONAL, and the cases whose closing behaviour was not OK.

Size limit: a server may refuse messages over its limit (RFC 6455 10.4) by
closing with 1009, and Autobahn then marks cases whose message is larger
(9.1.4-9.4.9 for a 1 MiB limit) FAILED, since it expects the echo. With
--max-message-size N (N > 0), a FAILED case whose message is over N bytes is
waived, counted in the `waived` column and listed, when the server closed it
cleanly with 1009; one over the limit that ended any other way (no close
frame, another code) is still a failure. The message size is read from the
case description ("payload of length 4 * 2**20").

--expect-all: every section Autobahn has (1-7, 9, 10; 8 and 11 do not exist)
must have run, else the report counts as incomplete.

Exit status: 0 when every case in sections 1-11 is OK, NON-STRICT,
INFORMATIONAL or waived; 1 when any is not; 2 when the report is missing or
incomplete.
"""

import argparse
import json
import os
import re
import sys

RESULTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
GATED_SECTIONS = range(1, 12)  # sections 1-11 must pass
ALL_SECTIONS = range(1, 14)
EXCLUDED_NOTE = {
    8: "no such section in Autobahn|Testsuite",
    11: "no such section in Autobahn|Testsuite",
    12: "not run (permessage-deflate not implemented)",
    13: "not run (permessage-deflate not implemented)",
}
EXPECTED_SECTIONS = [1, 2, 3, 4, 5, 6, 7, 9, 10]


def message_size(description):
    """The message size a case description states, in bytes, if it does."""
    match = re.search(r"length (\d+) \* 2\*\*(\d+)", description or "")
    if match:
        return int(match.group(1)) * 2 ** int(match.group(2))
    return None


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def squash(text, limit=400):
    text = re.sub(r"<[^>]+>", "", str(text))
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event(ev):
    """One received/expected event, without its (possibly huge) payload."""
    if not isinstance(ev, list) or not ev:
        return repr(ev)
    kind = ev[0]
    if kind == "message" and len(ev) >= 3:
        payload = ev[1]
        shown = repr(payload) if len(str(payload)) <= 40 else "%d chars" % len(str(payload))
        return "message(%s, %s)" % ("binary" if ev[2] else "text", shown)
    if kind in ("ping", "pong") and len(ev) >= 2:
        payload = str(ev[1])
        shown = repr(payload) if len(payload) <= 40 else "%d chars" % len(payload)
        return "%s(%s)" % (kind, shown)
    if kind == "timeout":
        return "timeout"
    return squash(json.dumps(ev), 120)


def events(evs):
    if not evs:
        return "(nothing)"
    return ", ".join(event(ev) for ev in evs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-message-size", type=int, default=0)
    parser.add_argument("--expect-all", action="store_true")
    parser.add_argument("report_dir")
    parser.add_argument("agent", nargs="?")
    args = parser.parse_args()
    report_dir = args.report_dir
    index_path = os.path.join(report_dir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        print("error: cannot read %s: %s" % (index_path, err), file=sys.stderr)
        return 2
    agent = args.agent
    if agent is None:
        if len(index) != 1:
            print("error: index.json has agents %s; name one" % sorted(index), file=sys.stderr)
            return 2
        agent = next(iter(index))
    cases = index.get(agent)
    if not cases:
        print("error: no cases for agent %r in %s" % (agent, index_path), file=sys.stderr)
        return 2

    def load_case(case_id):
        reportfile = cases[case_id].get("reportfile")
        if not reportfile:
            return {}
        try:
            with open(os.path.join(report_dir, reportfile)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def over_limit_closed_1009(case_id):
        """FAILED only because the message is over the server's limit."""
        if args.max_message_size <= 0 or cases[case_id].get("behavior") != "FAILED":
            return False
        detail = load_case(case_id)
        size = message_size(detail.get("description"))
        return (
            size is not None
            and size > args.max_message_size
            and detail.get("remoteCloseCode") == 1009
            and detail.get("wasClean") is True
            and detail.get("closedByMe") is False
        )

    counts = {s: {r: 0 for r in RESULTS} for s in ALL_SECTIONS}
    other = {s: {} for s in ALL_SECTIONS}
    waived_count = {s: 0 for s in ALL_SECTIONS}
    bad, bad_close, waived = [], [], []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        section = case_key(case_id)[0]
        behavior = entry.get("behavior")
        if section not in counts:
            counts[section] = {r: 0 for r in RESULTS}
            other[section] = {}
            waived_count[section] = 0
        if behavior in counts[section]:
            counts[section][behavior] += 1
        else:
            other[section][behavior] = other[section].get(behavior, 0) + 1
        if section in GATED_SECTIONS and behavior not in ACCEPTED:
            if over_limit_closed_1009(case_id):
                waived.append(case_id)
                waived_count[section] += 1
            else:
                bad.append(case_id)
        elif entry.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
            bad_close.append(case_id)

    # The table.
    header = ["section"] + RESULTS + ["other", "total", "waived"]
    widths = [max(7, len(h)) for h in header]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths)).rstrip()
    print("Autobahn|Testsuite fuzzingclient results for agent %r (%s)" % (agent, report_dir))
    print()
    print(line(header))
    totals = {r: 0 for r in RESULTS}
    total_other = 0
    incomplete = []
    for section in sorted(counts):
        row = counts[section]
        n_other = sum(other[section].values())
        n = sum(row.values()) + n_other
        if n == 0:
            note = EXCLUDED_NOTE.get(section, "no cases run")
            if section in EXPECTED_SECTIONS:
                incomplete.append(section)
            print(line([section]) + "  " + note)
            continue
        for r in RESULTS:
            totals[r] += row[r]
        total_other += n_other
        print(line([section] + [row[r] for r in RESULTS] + [n_other, n, waived_count[section]]))
    print(line(["total"] + [totals[r] for r in RESULTS]
               + [total_other, sum(totals.values()) + total_other, len(waived)]))
    if args.max_message_size > 0:
        print("(waived: FAILED cases whose message is over the server's %d-byte limit and that the"
              " server closed cleanly with 1009; they are counted under FAILED too)"
              % args.max_message_size)
    for section in sorted(other):
        if other[section]:
            print("  section %d 'other' results: %s" % (section, other[section]))

    def describe(case_id):
        entry = cases[case_id]
        detail = load_case(case_id)
        print()
        print("case %s: %s / close %s (remote close code %s)" % (
            case_id, entry.get("behavior"), entry.get("behaviorClose"), entry.get("remoteCloseCode")))
        if detail.get("description"):
            print("  description: %s" % squash(detail["description"]))
        size = message_size(detail.get("description"))
        if size is not None and 0 < args.max_message_size < size:
            print("  note:        the message (%d bytes) is over the server's %d-byte limit, but the "
                  "server did not close cleanly with 1009" % (size, args.max_message_size))
        if detail.get("expectation"):
            print("  expectation: %s" % squash(detail["expectation"]))
        if detail.get("result"):
            print("  result:      %s" % squash(detail["result"]))
        if detail.get("resultClose"):
            print("  close:       %s" % squash(detail["resultClose"]))
        expected = detail.get("expected") or {}
        for outcome in sorted(expected):
            print("  expected %-13s %s" % (outcome + ":", events(expected[outcome])))
        if "received" in detail:
            print("  received:              %s" % events(detail["received"]))
        ec = detail.get("expectedClose") or {}
        if ec:
            print("  expected close: closed by %s, close code in %s%s" % (
                "client (Autobahn)" if ec.get("closedByMe") else "server",
                ec.get("closeCode"),
                ", clean" if ec.get("requireClean") else ""))
        if detail:
            print("  observed close: wasClean=%s, remoteCloseCode=%s, remoteCloseReason=%r, "
                  "localCloseCode=%s, closedByMe=%s, droppedByMe=%s, failedByMe=%s%s" % (
                      detail.get("wasClean"), detail.get("remoteCloseCode"),
                      detail.get("remoteCloseReason"), detail.get("localCloseCode"),
                      detail.get("closedByMe"), detail.get("droppedByMe"), detail.get("failedByMe"),
                      ", wasNotCleanReason=%r" % detail["wasNotCleanReason"]
                      if detail.get("wasNotCleanReason") else ""))

    if bad:
        print()
        print("=== %d case(s) in sections 1-11 not OK / NON-STRICT / INFORMATIONAL%s ===" % (
            len(bad), " and not waived" if args.max_message_size > 0 else ""))
        for case_id in bad:
            describe(case_id)
    for result in ("NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
        ids = [c for c in sorted(cases, key=case_key) if cases[c].get("behavior") == result]
        if ids:
            print()
            print("%s: %s" % (result, " ".join(ids)))
    if waived:
        print()
        print("=== %d case(s) waived: message over the %d-byte limit, closed cleanly with 1009 ===" % (
            len(waived), args.max_message_size))
        print("  " + " ".join(waived))
    if bad_close:
        print()
        print("=== %d other case(s) whose closing behaviour was not OK (not gated) ===" % len(bad_close))
        for case_id in bad_close:
            entry = cases[case_id]
            print("  %s: %s / close %s (remote close code %s)" % (
                case_id, entry.get("behavior"), entry.get("behaviorClose"), entry.get("remoteCloseCode")))

    print()
    if incomplete and args.expect_all:
        print("INCOMPLETE: no cases ran in section(s) %s" % ", ".join(map(str, incomplete)))
        return 2
    if bad:
        print("FAIL: %d case(s) in sections 1-11 failed" % len(bad))
        return 1
    print("PASS: every case in sections 1-11 is OK, NON-STRICT or INFORMATIONAL%s" % (
        " (or waived)" if waived else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
