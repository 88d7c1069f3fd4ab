"""The offline teacher: grounded Q&A pairs from the chunks themselves, no key and no network.

    flywheel distill --teacher offline [--max-pairs N]

Every answer is an extracted sentence (or a table row, a procedure's steps, a section's lead), so it is
grounded by construction; the rules turn declaratives into questions: tables, definitions, figures
and deadlines, procedures and checklists (team handbooks), and for reference documentation each
item's lead ("What does PRAGMA auto_vacuum do?"), defaults, return values, conditions and limits.
Deterministic: the same chunks always give the same pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.grounding import STOPWORDS, content_tokens, extractive_answer, sentences
from agent.prompts import NOT_FOUND, Passage
from training.teachers import QAPair, TeacherUsage


# ---------------------------------------------------------------------------------------------
# offline: rule-based, extractive
# ---------------------------------------------------------------------------------------------
class OfflineTeacher:
    """Deterministic pairs from the chunk text itself (the rules are in `candidates` below)."""

    name = "offline"

    def __init__(self) -> None:
        self.usage = TeacherUsage()

    def pairs_for(self, chunks: list[dict], max_pairs: int) -> list[QAPair]:
        out: list[QAPair] = []
        seen: set[str] = set()
        for n, chunk in enumerate(chunks):
            found = candidates(chunk["text"], chunk.get("heading") or "", chunk.get("source") or "")
            if n == 0 and (lead := lead_pair(chunk["text"], chunk.get("heading") or "")):
                found.insert(0, lead)  # the section opens with what its subject is or does
            for question, answer, rule in found:
                key = " ".join(sorted(content_tokens(question)))
                if key in seen:
                    continue
                seen.add(key)
                out.append(QAPair(question, answer, reasoning=f"offline rule: {rule}", chunk_ids=[chunk["id"]]))
        # Spread the budget over rule kinds (a big table must not crowd out the procedure question).
        return _round_robin(out, max_pairs)

    def rewrite(self, question: str, passages: Sequence[Passage]) -> str | None:
        """The passage sentence that best answers the question, cited; NOT_FOUND when none does."""
        found = extractive_answer(question, passages, min_coverage=0.5, max_sentences=1)
        if found is None:
            return NOT_FOUND
        quote, cited = found
        text = quote.removeprefix("The documents say: “").rsplit("”", 1)[0].strip()
        text = strip_bullet(text).rstrip(" .;:")
        return f"{text} [{cited[0]}]."


def _round_robin(pairs: list[QAPair], limit: int) -> list[QAPair]:
    by_rule: dict[str, list[QAPair]] = {}
    for pair in pairs:
        by_rule.setdefault(pair.reasoning, []).append(pair)
    queues, picked = list(by_rule.values()), []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


# ---------------------------------------------------------------------------------------------
# the offline rules: declaratives -> questions, with extracted sentences as answers
# ---------------------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*•]\s+(?:\[[ xX]\]\s+)?|\d{1,2}[.)]\s+)")
_STEP = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.M)
_UNIT = r"(?:business days?|business hours?|minutes?|hours?|days?|weeks?|months?|years?|seconds?|nights?)"
_WEEKDAY = r"(?:Mondays?|Tuesdays?|Wednesdays?|Thursdays?|Fridays?|Saturdays?|Sundays?)"
# (question word, pattern of the figure): the first match in a clause decides the question.
_FIGURES: list[tuple[str, re.Pattern[str]]] = [
    ("How far in advance", re.compile(rf"\bat least \d+ {_UNIT} (?:before|in advance)\b")),
    ("How soon", re.compile(rf"\bwithin (?:\d+|one|two|three) {_UNIT}\b")),
    ("How long", re.compile(rf"\b(?:for (?:the first |up to |at least )?\d+ {_UNIT})\b")),
    ("When", re.compile(rf"\b(?:every|on) {_WEEKDAY}\b")),
    ("How often", re.compile(rf"\bevery \d+ {_UNIT}\b")),
    ("At what rate", re.compile(r"\bat \$[\d,.]+ per \w+")),
]
_SUBJECT_AUX = re.compile(r"^(?P<subj>[A-Z][\w`'/ -]{1,60}?) (?P<aux>must|should|can|may|will|is|are|needs to|need to)"
                          r" (?P<rest>.+)$")
_SUBJECT_VERB = re.compile(r"^(?P<subj>(?:Each|Every|The|A|An|Our|Your)? ?[A-Z]?[\w`'/ -]{1,40}?) "
                           r"(?P<verb>lasts|happens|takes|runs|confirms|answers|pages|expires|lists)\b(?P<rest>.*)$")
_LEADING = re.compile(r"^(When|If|During|After|Before|On|For) ([^,]{3,60}), (.+)$")
_NO_SUBJECT = {"nobody", "no one", "never", "it", "this", "that", "there", "they", "these", "those", "you", "we"}
_DETERMINERS = {"the", "a", "an", "each", "every", "all", "any", "our", "your", "their", "no", "this", "it"}
_DESCRIBES = ("what it does", "what it is for", "description", "definition", "meaning")
# Imperatives worth asking "how soon / how far in advance should I ...?" about ("Choose hotels within
# 30 minutes of the site" is a distance, not a deadline: only verbs of doing-by-a-time qualify).
_IMPERATIVES = frozenset("""acknowledge upload book start install report remove submit claim rotate renew register
    update pay complete join attend announce respond reply request apply schedule finish publish file return
    send notify tell confirm cancel change replace""".split())
# Table cells start with capitals; these first words read better lower-cased inside a sentence.
_LOWERABLE = STOPWORDS | frozenset("""above under over up your automatically automatic created added request after
    named once every need-to-know employees""".split())


def strip_bullet(text: str) -> str:
    return _BULLET.sub("", text).replace("**", "").strip()


def _lower_first(text: str) -> str:
    """Lower-case a leading capital unless it starts an acronym or a name like `SEV1` / `GitHub`."""
    first = text.split(" ")[0] if text else ""
    if first and first[0].isupper() and (first.lower() in ("a", "an") or (first[1:].islower() and len(first) > 1)):
        return text[0].lower() + text[1:]
    return text


def _cell_case(text: str) -> str:
    first = text.split(" ")[0].lower() if text else ""
    return text[0].lower() + text[1:] if first in _LOWERABLE else text


def _leaf(heading: str) -> str:
    """The last heading of a path without its section number: `2. Setup > 2.1 Laptop` -> `Laptop`."""
    leaf = heading.split(" > ")[-1] if heading else ""
    return re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", leaf).strip()


def _topic(heading: str) -> str:
    return _lower_first(_leaf(heading))


def _sentence(text: str) -> str:
    text = strip_bullet(text).rstrip(" ;,")
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def _base_verb(word: str) -> str:
    """`lasts` -> `last`, `happens` -> `happen`, `Submitting` -> `submit`, `Declaring` -> `declare`."""
    word = word.lower()
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            return stem[:-1]
        if re.search(r"[aeiou][rvcz]$", stem) or stem.endswith("us"):
            return stem + "e"
        return stem
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _figure_question(clause: str) -> tuple[str, str] | None:
    """`Acknowledge a page within 15 minutes` -> `How soon should I acknowledge a page?`."""
    tail = ""
    lead = _LEADING.match(clause)
    if lead:
        clause, tail = lead.group(3), f" {lead.group(1).lower()} {lead.group(2)}"
    for word, pattern in _FIGURES:
        found = pattern.search(clause)
        if not found:
            continue
        before = clause[: found.start()].strip()
        if (not before or before.endswith(",") or len(before.split()) < 2 or re.search(r"\d|:", before)
                or re.search(r"\b(that|who|which)\b", before) or before.split()[-1].endswith("ly")):
            return None  # the figure sits in an aside or a relative clause, or the question would leak numbers
        first = before.split()[0].lower()
        if m := _SUBJECT_AUX.match(before):
            subj = m.group("subj")
            if subj.lower() in _NO_SUBJECT or len(subj.split()) > 8:
                return None
            return f"{word} {m.group('aux')} {_lower_first(subj)} {m.group('rest')}{tail}?", word
        if m := _SUBJECT_VERB.match(before):
            subj = m.group("subj").strip()
            if subj.lower() in _NO_SUBJECT:
                return None
            rest = m.group("rest").strip()
            return f"{word} does {_lower_first(subj)} {_base_verb(m.group('verb'))}{' ' + rest if rest else ''}{tail}?", word
        if first in _IMPERATIVES:
            return f"{word} should I {_lower_first(before)}{tail}?", word  # an imperative: "Book flights ..."
        return None
    return None


def _sentence_pairs(text: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for raw in sentences(text):
        if "|" in raw or _STEP.match(raw):
            continue
        sent = strip_bullet(raw)
        words = sent.split()
        if not 4 <= len(words) <= 45:
            continue
        answer = _sentence(sent)
        if m := re.search(r"(`?[A-Z][\w.-]*`?), our ([a-z][\w -]{3,40}?)(?: at|,|\.|$)", sent):
            out.append((f"What is {m.group(1)}?", answer, "definition"))
        if m := re.match(r"We use ([A-Z][\w-]+) for ([\w -]{3,40})\.?$", sent):
            out.append((f"What do we use for {m.group(2)}?", answer, "definition"))
        if m := re.match(r"^(?:An? |The )?([\w` -]{3,40}) looks like ", sent):
            out.append((f"What does {_lower_first(sent.split(' looks like ')[0])} look like?", answer, "definition"))
        if m := re.match(r"^([A-Z][\w` -]{2,40}?) means ", sent):
            out.append((f"What does {_lower_first(m.group(1))} mean?", answer, "definition"))
        elif m := re.match(r"^(The [a-z][\w-]+(?: [a-z][\w-]+)?) (is|are) (?:the|a|an) ", sent):
            out.append((f"What {m.group(2)} {_lower_first(m.group(1))}?", answer, "definition"))
        out.extend(_reference_pairs(sent, answer))
        if m := re.search(r"\b(?:an?|the) ((?:[\w-]+ ){0,3}(?:budget|stipend|allowance|fee|cap|limit|gift)) of (?:up to )?\$[\d,.]+", sent):
            owner = re.match(r"^([A-Z][\w -]{2,30}?) (?:has|have|gets?|receives?) ", sent)
            who = f" for {_lower_first(owner.group(1))}" if owner else ""
            out.append((f"How much is the {m.group(1)}{who}?", answer, "figure"))
            continue
        for clause in sent.split("; ")[:1]:
            made = _figure_question(clause.rstrip("."))
            if made:
                out.append((made[0], answer, "figure"))
    return out


_CONDITION = re.compile(r"^(If|When|Unless) ([^,]{8,90}), (?:then )?(.{12,})$")
_DEFAULT = re.compile(r"^(?:The )?default ([\w\s\"'-]{3,50}?) (is|are) (.+)$", re.I)
_DEFAULTS_TO = re.compile(r"^(?:The )?([\w\s.()-]{3,50}?) defaults to (.+)$")
_RETURNS = re.compile(r"^(?:The )?([\w.()\[\], -]{2,50}?) (?:function |pragma |routine |method |command )?returns (.+)$")
_CANNOT = re.compile(r"^(?:The |An? )?([\w\s.()-]{3,50}?) (cannot|can not|may not|must not) (\w.{8,})$")
_NOT_SUBJECTS = frozenset("which that such when if note also each because since".split())


def _reference_pairs(sent: str, answer: str) -> list[tuple[str, str, str]]:
    """Rules for reference documentation: defaults, return values, conditions, prohibitions."""
    out = []
    subject_ok = lambda s: s.split()[0].lower() not in _NO_SUBJECT | _NOT_SUBJECTS  # noqa: E731
    if sent.endswith(":") or sent.endswith(":."):
        return out  # introduces a list or an example: the answer would be cut off
    if (m := _DEFAULT.match(sent)) and subject_ok(m.group(1)):
        out.append((f"What {m.group(2)} the default {m.group(1).strip()}?", answer, "default"))
    elif (m := _DEFAULTS_TO.match(sent)) and subject_ok(m.group(1)):
        out.append((f"What does {_lower_first(m.group(1).strip())} default to?", answer, "default"))
    if (m := _RETURNS.match(sent)) and subject_ok(m.group(1)):
        out.append((f"What does {_lower_first(m.group(1).strip())} return?", answer, "returns"))
    if (m := _CONDITION.match(sent)) and len(m.group(2).split()) >= 3 and m.group(2).count("(") == m.group(2).count(")"):
        verb = {"If": "if", "When": "when", "Unless": "unless"}[m.group(1)]
        out.append((f"What happens {verb} {_lower_first(m.group(2).strip())}?", answer, "condition"))
    if (m := _CANNOT.match(sent)) and subject_ok(m.group(1)) and len(m.group(1).split()) <= 6 \
            and len(m.group(3).split()) <= 16:
        verb = {"cannot": "can", "can not": "can", "may not": "may", "must not": "must"}[m.group(2)]
        rest = m.group(3).rstrip(".")
        out.append((f"{verb.capitalize()} {_lower_first(m.group(1).strip())} {rest}?", answer, "limit"))
    return out


_GENERIC_HEADINGS = frozenset("""introduction overview summary background syntax examples example notes see also
    contents table of details description history usage discussion""".split())


def lead_pair(text: str, heading: str) -> tuple[str, str, str] | None:
    """"What does PRAGMA auto_vacuum do?" -> the first descriptive sentences of its section.

    Reference pages (pragmas, functions, options, commands) open each item's section with what it
    does; the syntax lines before that are skipped."""
    leaf = _leaf(heading)
    words = leaf.split()
    if (not 1 <= len(words) <= 5 or set(w.lower() for w in words) <= _GENERIC_HEADINGS or leaf.endswith("?")
            or words[0].lower() in ("list", "table", "index", "appendix")):
        return None
    prose = []
    for sent in sentences(text):
        plain = strip_bullet(sent)
        tokens = plain.split()
        alpha = sum(t.isalpha() for t in tokens)
        if len(tokens) >= 5 and alpha >= 0.6 * len(tokens) and "|" not in plain and "=" not in plain:
            prose.append(_sentence(plain))
        elif prose:
            break
        if len(prose) == 2 or (prose and len(prose[0].split()) >= 18):
            break
    if not prose:
        return None
    if re.match(r"^[A-Z]+ \w+$", leaf) and leaf.split()[0] in ("PRAGMA", "OPTION", "COMMAND"):
        question = f"What does {leaf} do?"
    elif re.match(r"^[\w.]+\(.*\)$", leaf):
        question = f"What does the {leaf.split('(')[0]}() function do?"
    elif re.match(r"^(The )?[\w-]+ (option|setting|parameter|flag|command|statement|clause|function|pragma)$", leaf, re.I):
        question = f"What does the {re.sub(r'^The ', '', leaf)} do?"
    elif words[0].lower() in ("how", "what", "when", "why", "who", "where"):
        return None  # question-like headings are handled by the procedure rule
    elif (len(heading.split(" > ")) > 1 and len(words) <= 4 and not re.search(r"\d", leaf)
          and not words[-1].endswith("s") and not words[0].lower().endswith("ing")
          and content_tokens(leaf) <= content_tokens(prose[0])):
        question = f"What is {_lower_first(leaf) if len(words) > 1 else leaf}?"  # a term the section defines
    else:
        return None
    return question, " ".join(prose), "lead"


def _table_pairs(text: str, topic: str) -> list[tuple[str, str, str]]:
    lines = [ln for ln in text.splitlines() if ln.count("|") >= 1 and not re.fullmatch(r"[\s|:-]+", ln)]
    if len(lines) < 2:
        return []
    cells = lambda line: [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]  # noqa: E731
    header, out = cells(lines[0]), []
    keys = [cells(line)[0] for line in lines[1:]]
    if len(set(keys)) < len(keys) or all(re.fullmatch(r"[\d.,-]+", k) for k in keys):
        return []  # a repeated or bare-number key ("for 1?") would ask one question with several answers
    prefix = f"For {topic}, " if topic else ""
    for line in lines[1:]:
        row = cells(line)
        if len(row) != len(header) or not row[0]:
            continue
        key = _cell_case(row[0])
        for col, value in zip(header[1:], row[1:]):
            name = _lower_first(col)
            if not value or not name:
                continue
            if name.lower() in _DESCRIBES:
                verb = "do" if "does" in name else "mean"
                if "is for" in name:
                    q, a = f"What is {row[0]} for?", f"{row[0]} is for {_lower_first(value)}."
                elif verb == "mean":
                    q, a = f"What does {row[0]} mean?", f"{row[0]} means: {value.rstrip('.')}."
                else:
                    q, a = f"What does {row[0]} do?", f"{row[0]} {_lower_first(value).rstrip('.')}."
                out.append((prefix + _lower_first(q), a, "table"))
                continue
            if len(value.split()) > 14:
                continue
            if m := re.match(r"^(how|when|where|what) you (.+)$", name, re.I):
                q = f"{m.group(1).capitalize()} do I {m.group(2)} for {row[0]}?".replace("access for", "access to")
                q, a = q, f"{row[0]}: {value.rstrip('.')}."
            elif re.match(r"^(who|when|where|how|what) ", name, re.I):
                joiner = "after" if re.search(rf"\d+ {_UNIT}$", key) else "for"
                q, a = f"{name[0].upper() + name[1:]} {joiner} {key}?", f"{row[0]}: {value.rstrip('.')}."
            else:
                verb = "are" if name.endswith("s") and not name.endswith("ss") else "is"
                q, a = f"What {verb} the {name} for {key}?", f"The {name} for {key} {verb} {_cell_case(value).rstrip('.')}."
            out.append((prefix + _lower_first(q), a, "table"))
    return out


def _procedure_question(heading: str) -> str | None:
    parts = [p for p in heading.split(" > ") if p]
    if not parts:
        return None
    leaf, parent = _topic(heading), _topic(" > ".join(parts[:-1])) if len(parts) > 1 else ""
    if m := re.match(r"^[Hh]ow to (.+)$", leaf):
        what = re.sub(r"\b(it|them)$", parent.lower() or r"\1", m.group(1))
        return f"How do I {what}?"
    if m := re.match(r"^[Hh]ow (an?|the) (.+) (\w+s)$", leaf):
        return f"How does {m.group(1)} {m.group(2)} {_base_verb(m.group(3))}?"
    if m := re.match(r"^[Ww]hat (.+) does$", leaf):
        return f"What does {m.group(1)} do?"
    if (first := leaf.split()[0]).lower().endswith("ing") and len(first) > 5:
        return f"How do I {_base_verb(first)} {' '.join(leaf.split()[1:])}?".replace("  ", " ")
    if leaf.lower().endswith(("procedure", "process", "steps")):
        return f"What is the {leaf.lower()}?"
    return f"What are the steps for {leaf.lower()}?"


def _gist(step: str) -> str:
    """A step's first sentence, or two when the first is only a title ("3. Canary. `shipit` sends ...")."""
    parts = sentences(step) or [step]
    gist = " ".join(parts[:2]) if len(parts[0].split()) < 4 else parts[0]
    return gist.rstrip(".") + "."


def _list_pairs(text: str, heading: str) -> list[tuple[str, str, str]]:
    steps = [strip_bullet(ln) for ln in text.splitlines() if _STEP.match(ln)]
    checks = [strip_bullet(ln) for ln in text.splitlines() if re.match(r"^\s*- \[[ xX]\]", ln)]
    out: list[tuple[str, str, str]] = []
    if len(steps) >= 2 and not re.search(r"\(page \d+\)", text) and (question := _procedure_question(heading)):
        firsts = [_gist(s) for s in steps[:7]]
        out.append((question, " ".join(f"{n}. {s}" for n, s in enumerate(firsts, 1)), "procedure"))
    if len(checks) >= 2 and heading:
        parts = [_topic(p) for p in heading.split(" > ")]
        where = f"the {parts[-2].lower()} for {parts[-1].lower()}" if len(parts) > 2 else f"the {parts[-1].lower()} checklist"
        firsts = [(sentences(s) or [s])[0].rstrip(".") + "." for s in checks[:6]]
        out.append((f"What is on {where}?", " ".join(firsts), "checklist"))
    return out


_THIS_ITEM = r"\b[Tt]his (?:pragma|function|option|command|setting|statement|clause|parameter)\b"


def candidates(text: str, heading: str, source: str = "") -> list[tuple[str, str, str]]:
    """(question, answer, rule) candidates for one chunk; the distill step filters them further."""
    topic = _topic(heading)
    found = _list_pairs(text, heading) + _table_pairs(text, topic) + _sentence_pairs(text)
    section_words = content_tokens(heading)
    if re.match(r"^(how|what|when|why|who|after|before|questions|the short)\b", topic, re.I):
        topic = ""  # "For how a deploy progresses, ..." reads worse than no qualifier
    out = []
    for question, answer, rule in found:
        question = re.sub(r"\s+", " ", question).strip()
        if topic and re.search(_THIS_ITEM, question):
            question = re.sub(_THIS_ITEM, topic if topic[0].isupper() else f"the {topic}", question)
        if topic and rule != "table" and not (content_tokens(question) & section_words):
            # "How much is the gift?" is ambiguous on its own: name the section it comes from.
            question = f"For {topic}, {_lower_first(question)}"
        question = question[0].upper() + question[1:]
        out.append((question, re.sub(r"[ \t]+", " ", answer).strip(), rule))
    return out
