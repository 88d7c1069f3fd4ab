"""The offline teacher: grounded Q&A pairs from the chunks themselves, no key and no network.

    flywheel distill --teacher offline [--max-pairs N]

Rules turn a section's statements into the questions people type ("How do I …?", "How soon should
I …?", "What happens if …?", "Which option …?", "What's the default …?", "Can I …?", "Why …?", "When
should I …?") and answer each with whole sentences of the passage (a table row as one sentence, a
procedure's steps), so every answer is grounded by construction. To read like users, not documents:
a stable hash of the sentence (sha1, not Python's salted `hash`) orders each rule's wordings, a small
synonym table swaps a few verbs and nouns (never the subject's own words), "you/your" becomes "I/my",
and a question that does not name its subject gets the topic woven in ("… when booking through
Wayfare?"), never a "For <heading>, …" prefix; questions distill would drop are not written.
About one pair in eight is unanswerable on purpose: a near-topic question (a price, a version, an
owner, a date) whose key word the section never uses, answered exactly NOT_FOUND; distill re-checks
that word against the whole document (training/distill.py refusal_holds).
Deterministic: the same chunks always give the same pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from agent.grounding import STOPWORDS, content_tokens, extractive_answer, sentences
from agent.prompts import NOT_FOUND, Passage
from training.distill import is_leaky, names_subject, refusal_holds, stems
from training.teachers import QAPair, TeacherUsage

# Unanswerable pairs written per answerable pair. distill keeps only about half of them (the key word
# often appears elsewhere in the document), so 0.25 gives 10-15% of the kept pairs (the sample handbook).
REFUSAL_RATE = 0.25


class OfflineTeacher:
    """Deterministic pairs from the chunk text itself (the rules are in `candidates` below)."""

    name = "offline"

    def __init__(self) -> None:
        self.usage = TeacherUsage()

    def pairs_for(self, chunks: list[dict], max_pairs: int) -> list[QAPair]:
        out: list[QAPair] = []
        seen: set[str] = set()
        for n, chunk in enumerate(chunks if max_pairs > 0 else []):
            for question, answer, rule in candidates(chunk["text"], chunk.get("heading") or "", with_lead=n == 0):
                key = " ".join(sorted(content_tokens(question)))
                if key not in seen:
                    seen.add(key)
                    out.append(QAPair(question, answer, reasoning=f"offline rule: {rule}", chunk_ids=[chunk["id"]]))
        # Spread the budget over rule kinds (a big table must not crowd out the procedure question).
        picked = _round_robin(out, max_pairs)
        refusals = unanswerable(chunks, len(picked)) if picked else []
        return picked[: max_pairs - len(refusals)] + refusals

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
    queues = [[p for p in pairs if p.reasoning == rule] for rule in dict.fromkeys(p.reasoning for p in pairs)]
    picked: list[QAPair] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def _stable(*parts: str) -> float:
    """A number in [0, 1) fixed by the text: sha1, the same on every run and machine."""
    return int.from_bytes(hashlib.sha1("\x1f".join(parts).encode()).digest()[:8], "big") / 2**64


# A rule offers a question in a few wordings; `_pick` orders them by a stable hash of the sentence so
# runs vary from sentence to sentence, and `_finish` takes the first that stands alone.
Asked = str | tuple[str, ...]


def _pick(key: str, options: Sequence[str]) -> tuple[str, ...]:
    start = int(_stable(key) * len(options))
    return tuple(options[start:]) + tuple(options[:start])


# --- text helpers ----------------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*•]\s+(?:\[[ xX]\]\s+)?|\d{1,2}[.)]\s+)")
_STEP = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.M)
_UNIT = r"(?:business days?|business hours?|minutes?|hours?|days?|weeks?|months?|years?|seconds?|nights?)"
_WEEKDAY = r"(?:Mondays?|Tuesdays?|Wednesdays?|Thursdays?|Fridays?|Saturdays?|Sundays?)"
# Imperatives that start an instruction ("Book flights ...", "Post the last 20 lines ...").
_IMPERATIVES = frozenset("""acknowledge upload book start install report remove submit claim rotate renew register
    update pay complete join attend announce respond reply request apply schedule finish publish file return
    send notify tell confirm cancel change replace post run use ask hand say check call email contact open
    keep read review add create delete set turn lock take follow wait write""".split())
# Table cells start with capitals; these first words read better lower-cased inside a sentence.
_LOWERABLE = STOPWORDS | frozenset("""above under over up your automatically automatic created added request after
    named once every need-to-know employees""".split())


def strip_bullet(text: str) -> str:
    return _BULLET.sub("", text).replace("**", "").strip()


def _lower_first(text: str) -> str:
    """Lower-case a leading capital unless it starts an acronym or a name like `SEV1` / `GitHub`."""
    first = text.split(" ")[0] if text else ""
    lower = first[:1].isupper() and (first.lower() in ("a", "an") or (first[1:].islower() and len(first) > 1))
    return text[0].lower() + text[1:] if lower else text


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
    """A whole sentence: no bullet, and it ends with . ! or ? (the dataset puts the [n] before it)."""
    text = strip_bullet(text).rstrip(" ;,:")
    return text if text.endswith((".", "!", "?")) else text + "."


def _base_verb(word: str) -> str:
    """`lasts` -> `last`, `happens` -> `happen`, `Submitting` -> `submit`, `Declaring` -> `declare`."""
    word = word.lower()
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            return stem[:-1]
        return stem + "e" if re.search(r"[aeiou][rvcz]$", stem) or stem.endswith("us") else stem
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _first_person(text: str) -> str:
    """Users ask about themselves: "if you are paged" -> "if I am paged", "your plans" -> "my plans"."""
    if "`" in text:  # code is quoted as written
        return text
    if text.startswith("Can you explain "):  # the user asking us, not about themselves
        return text[:16] + _first_person(text[16:])
    text = re.sub(r"(?<![\w-])[Yy]our(?![\w-])", "my", text)
    text = re.sub(r"(?<![\w-])yourself(?![\w-])", "myself", text)
    text = re.sub(r"(^|\b(?:if|when|unless|and|or|that|until|once|before|after|should|can|may|do)\s+|,\s*)"
                  r"you(?![\w-])", r"\1I", text)
    text = re.sub(r"(?<![\w-])you(?![\w-])", "me", text)
    return re.sub(r"\bI are\b", "I am", re.sub(r"\bI were\b", "I was", text))


# Swapped in about half of the questions that use them, never in the subject's own words: users
# rarely repeat the document's verbs, and retrieval has to learn to bridge that gap.
_SYNONYMS = dict(pair.split(":") for pair in """acknowledge:respond_to submit:file upload:send_in purchase:buy
    obtain:get receive:get request:ask_for notify:tell inform:tell contact:reach remove:delete begin:start
    rotate:change complete:finish attend:go_to assist:help require:need requires:needs choose:pick select:pick
    provide:give employees:staff colleagues:teammates immediately:right_away approximately:about
    permitted:allowed""".split())  # "_" is a space


def _paraphrase(question: str, protected: set[str]) -> str:
    def swap(m: re.Match[str]) -> str:
        word, new = m.group(0), _SYNONYMS.get(m.group(0))
        keep = not new or stems(word) & protected or _stable(question, word) < 0.5
        return word if keep else new.replace("_", " ")

    return re.sub(r"\b[a-z]+\b", swap, question)


# --- sentence rules: statements -> questions, with the sentence as the answer ----------------------------
# (question word, pattern of the figure, its variants): the first match in a clause decides.
_FIGURES: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    ("How far in advance", re.compile(rf"\bat least \d+ {_UNIT} (?:before|in advance)\b"),
     ("How far in advance", "How early")),
    ("How soon", re.compile(rf"\bwithin (?:\d+|one|two|three) {_UNIT}\b"), ("How soon", "How quickly")),
    ("How long", re.compile(rf"\b(?:for (?:the first |up to |at least )?\d+ {_UNIT})\b"), ("How long",)),
    ("When", re.compile(rf"\b(?:every|on) {_WEEKDAY}\b"), ("When", "On which day")),
    ("How often", re.compile(rf"\bevery \d+ {_UNIT}\b"), ("How often", "How frequently")),
    ("At what rate", re.compile(r"\bat \$[\d,.]+ per \w+"), ("At what rate",)),
]
# Extra ways to ask for a deadline of an instruction ("Acknowledge a page within 15 minutes").
_DEADLINE = ("What's the deadline to {vp}?", "How long do I have to {vp}?")
_SUBJECT_AUX = re.compile(r"^(?P<subj>[A-Z][\w`'/ -]{1,60}?) "
                          r"(?P<aux>must|should|can|may|will|is|are|needs to|need to) (?P<rest>.+)$")
_SUBJECT_VERB = re.compile(r"^(?P<subj>(?:Each|Every|The|A|An|Our|Your)? ?[A-Z]?[\w`'/ -]{1,40}?) "
                           r"(?P<verb>lasts|happens|takes|runs|confirms|answers|pages|expires|lists)\b(?P<rest>.*)$")
_LEADING = re.compile(r"^(When|If|During|After|Before|On|For) ([^,]{3,60}), (.+)$")
_NO_SUBJECT = {"nobody", "no one", "never", "it", "this", "that", "there", "they", "these", "those", "you", "we"}


def _figure_question(clause: str) -> tuple[Asked, str] | None:
    """`Acknowledge a page within 15 minutes` -> `How soon should I acknowledge a page?` (or a variant)."""
    tail = ""
    if lead := _LEADING.match(clause):
        clause, tail = lead.group(3), f" {lead.group(1).lower()} {lead.group(2)}"
    for word, pattern, variants in _FIGURES:
        found = pattern.search(clause)
        if not found:
            continue
        before = clause[: found.start()].strip()
        if (not before or before.endswith(",") or len(before.split()) < 2 or re.search(r"\d|:", before)
                or re.search(r"\b(that|who|which)\b", before) or before.split()[-1].endswith("ly")):
            return None  # the figure sits in an aside or a relative clause, or the question would leak numbers
        if m := _SUBJECT_AUX.match(before):
            subj = m.group("subj")
            if subj.lower() in _NO_SUBJECT or len(subj.split()) > 8:
                return None
            rest = f"{m.group('aux')} {_lower_first(subj)} {m.group('rest')}{tail}"
            return _pick(clause, [f"{w} {rest}?" for w in variants]), word
        if m := _SUBJECT_VERB.match(before):
            subj = m.group("subj").strip()
            if subj.lower() in _NO_SUBJECT:
                return None
            rest = " ".join(filter(None, (_base_verb(m.group("verb")), m.group("rest").strip()))) + tail
            return _pick(clause, [f"{w} does {_lower_first(subj)} {rest}?" for w in variants]), word
        if before.split()[0].lower() in _IMPERATIVES:  # an instruction: "Book flights ..."
            vp = _lower_first(before) + tail
            options = [f"{w} should I {vp}?" for w in variants]
            return _pick(before, options + ([t.format(vp=vp) for t in _DEADLINE] if word == "How soon" else [])), word
        return None
    return None


_CONDITION = re.compile(r"^(If|When|Unless) ([^,]{8,90}), (?:then )?(.{12,})$")
_DEFAULT = re.compile(r"^(?:The )?default ([\w\s\"'-]{3,50}?) (is|are) (.+)$", re.I)
_DEFAULTS_TO = re.compile(r"^(?:The )?([\w\s.()`-]{3,50}?) defaults to (.+)$")
_BY_DEFAULT = re.compile(r"^(?:The )?([\w\s.()`-]{3,50}?) (?:is|are) (?:set to )?(.{1,40}?) by default\b")
_RETURNS = re.compile(r"^(?:The )?([\w.()\[\], -]{2,50}?) (?:function |pragma |routine |method |command )?"
                      r"returns (.+)$")
_CANNOT = re.compile(r"^(?:The |An? )?([\w\s.()-]{3,50}?) (cannot|can not|may not|must not) (\w.{8,})$")
_OPTION = re.compile(r"^(?:The )?(`?-{1,2}[\w-]+`?|`[^`]+`) (option|flag|switch|setting|parameter) ([a-z]+s) "
                     r"(.{6,})$")
_TO_DO = re.compile(r"^To ([a-z][^,]{6,60}), (.+)$")
_MAY = re.compile(r"^(?:You|Employees|Everyone|Anyone|Staff) (?:can|may|are allowed to) ([a-z].{6,})$")
_NEVER = re.compile(r"^(?:Never|Do not|Don't) ([a-z].{6,})$")
_WHY = re.compile(r"^(.{8,80}?),? (?:because|since|so that|to avoid|to prevent) (.{6,})$")
_WHERE = re.compile(r"^(?:The )?([A-Z]?[\w-]+(?: [\w-]+)?) (writes|stores|keeps|puts|saves|sends|posts) (.{3,40}?) "
                    r"(?:in|into|to|under) (?:the )?(.{3,80})$")
_WHEN_DONE = re.compile(r"^(?:The )?([A-Z]?[\w -]{3,40}?) (is|are) ([a-z]+ed)(?: automatically)? "
                        r"(?:when|after|once) (.{6,})$")
_BUDGET = re.compile(r"\b(?:an?|the) ((?:[\w-]+ ){0,3}(?:budget|stipend|allowance|fee|cap|limit|gift)) of "
                     r"(?:up to )?\$[\d,.]+")
_NOT_SUBJECTS = frozenset("which that such when if note also each because since".split())


def _subject_ok(subject: str) -> bool:
    return subject.split()[0].lower() not in _NO_SUBJECT | _NOT_SUBJECTS


def _why_question(clause: str) -> str | None:
    """The main clause of "X because Y" as a why-question: "We pay for on-call" -> "Why do we pay for on-call?"."""
    if m := re.match(r"^We ([a-z]+) (.+)$", clause):
        return f"Why do we {m.group(1)} {m.group(2)}?" if m.group(1) not in ("are", "were", "can", "will") else None
    if (m := _SUBJECT_AUX.match(clause)) and _subject_ok(m.group("subj")) and len(m.group("subj").split()) <= 5:
        return f"Why {m.group('aux')} {_lower_first(m.group('subj'))} {m.group('rest')}?"
    if clause.split()[0].lower() in _IMPERATIVES:
        return f"Why should I {_lower_first(clause)}?"
    return None


def _sentence_rules(sent: str, answer: str) -> list[tuple[Asked, str, str]]:
    """Rules for one sentence of prose: definitions, defaults, conditions, permissions, reasons, figures."""
    out: list[tuple[Asked, str, str]] = []
    if sent.endswith(":"):
        return out  # introduces a list or an example: the answer would be cut off
    body = sent.rstrip(".")
    if m := re.search(r"(`?[A-Z][\w.-]*`?), our ([a-z][\w -]{3,40}?)(?: at|,|\.|$)", sent):
        out.append((_pick(sent, (f"What's the name of our {m.group(2)}?", f"What {m.group(2)} does our team use?")),
                    answer, "definition"))
    if m := re.match(r"We use ([A-Z][\w-]+) for ([\w -]{3,40})\.?$", sent):
        out.append((f"What do we use for {m.group(2)}?", answer, "definition"))
    if m := re.match(r"^(?:An? |The )?([\w` -]{3,40}) looks like ", sent):
        out.append((f"What does {_lower_first(sent.split(' looks like ')[0])} look like?", answer, "definition"))
    if m := re.match(r"^([A-Z][\w` -]{2,40}?) means ", sent):
        out.append((_pick(sent, (f"What does {_lower_first(m.group(1))} mean?",
                                 f"What do we mean by {_lower_first(m.group(1))}?")), answer, "definition"))
    elif m := re.match(r"^(The [a-z][\w-]+(?: [a-z][\w-]+)?) (is|are) (?:the|a|an) ", sent):
        out.append((f"What {m.group(2)} {_lower_first(m.group(1))}?", answer, "definition"))
    if (m := _DEFAULT.match(body)) and _subject_ok(m.group(1)):
        out.append((_pick(sent, (f"What {m.group(2)} the default {m.group(1).strip()}?",
                                 f"What's the default {m.group(1).strip()}?")), answer, "default"))
    elif (m := _DEFAULTS_TO.match(body) or _BY_DEFAULT.match(body)) and _subject_ok(m.group(1)):
        what = _lower_first(m.group(1).strip())
        out.append((_pick(sent, (f"What does {what} default to?", f"What's the default for {what}?",
                                 f"What is {what} set to by default?")), answer, "default"))
    if (m := _RETURNS.match(body)) and _subject_ok(m.group(1)):
        out.append((f"What does {_lower_first(m.group(1).strip())} return?", answer, "returns"))
    if m := _OPTION.match(body):
        out.append((f"Which {m.group(2)} {m.group(3)} {m.group(4)}?", answer, "option"))
    if (m := _CONDITION.match(sent)) and len(m.group(2).split()) >= 3 and \
            m.group(2).count("(") == m.group(2).count(")"):
        cond, main = _first_person(_lower_first(m.group(2).strip())), m.group(3)
        verb = m.group(1).lower()
        if main.split()[0].lower() in _IMPERATIVES:  # "If the bootstrap fails, post ..." -> what should I do
            options: tuple[str, ...] = (f"What should I do {verb} {cond}?", f"What do I do {verb} {cond}?")
        else:
            options = (f"What happens {verb} {cond}?",)
        out.append((_pick(sent, options), answer, "condition"))
    if (m := _CANNOT.match(body)) and _subject_ok(m.group(1)) and len(m.group(1).split()) <= 6 \
            and len(m.group(3).split()) <= 16:
        verb = {"cannot": "can", "can not": "can", "may not": "may", "must not": "must"}[m.group(2)]
        out.append((f"{verb.capitalize()} {_lower_first(m.group(1).strip())} {m.group(3)}?", answer, "limit"))
    if (m := _MAY.match(body) or _NEVER.match(body)) and len(m.group(1).split()) <= 18 \
            and not re.match(r"^\w+ (?:it|them|this|that)\b", m.group(1)):
        out.append((_first_person(f"Can I {m.group(1)}?"), answer, "permission"))
    if (m := _TO_DO.match(body)) and m.group(2).split()[0].lower() in _IMPERATIVES:
        out.append((_pick(sent, (f"How do I {m.group(1)}?", f"What's the way to {m.group(1)}?")), answer, "how-to"))
    if (m := _WHERE.match(body)) and _subject_ok(m.group(1)):
        subj = m.group(1) if m.group(1)[1:].lower() != m.group(1)[1:] else _lower_first(m.group(1))
        out.append((f"Where does {subj} {_base_verb(m.group(2))} {m.group(3)}?", answer, "where"))
    if (m := _WHEN_DONE.match(body)) and _subject_ok(m.group(1)):
        out.append((f"When {m.group(2)} {_lower_first(m.group(1))} {m.group(3)}?", answer, "when"))
    if (m := _WHY.match(body)) and (question := _why_question(m.group(1))):
        out.append((question, answer, "why"))
    if (m := _LEADING.match(body)) and m.group(1) == "When" and m.group(3).split()[0].lower() in _IMPERATIVES:
        out.append((f"When should I {_lower_first(m.group(3))}?", answer, "when"))  # "When in doubt, declare ..."
    if m := _BUDGET.search(sent):
        owner = re.match(r"^([A-Z][\w -]{2,30}?) (?:has|have|gets?|receives?) ", sent)
        who = f" for {_lower_first(owner.group(1))}" if owner else ""
        out.append((_pick(sent, (f"How much is the {m.group(1)}{who}?", f"How big is the {m.group(1)}{who}?")),
                    answer, "figure"))
    elif made := _figure_question(sent.split("; ")[0].rstrip(".")):
        out.append((made[0], answer, "figure"))
    return out


def _sentence_pairs(text: str) -> list[tuple[Asked, str, str]]:
    out: list[tuple[Asked, str, str]] = []
    for line in text.splitlines():
        if "|" in line or _STEP.match(line):
            continue  # table rows and numbered steps have their own rules
        for raw in sentences(line):
            sent = strip_bullet(raw)
            if 4 <= len(sent.split()) <= 45:
                out.extend(_sentence_rules(sent, _sentence(sent)))
    return out


_GENERIC_HEADINGS = frozenset("""introduction overview summary background syntax examples example notes see also
    contents table of details description history usage discussion questions the short version""".split())


def lead_pair(text: str, heading: str) -> tuple[Asked, str, str] | None:
    """"What does PRAGMA auto_vacuum do?" -> the first descriptive sentences of its section.

    Reference pages (pragmas, functions, options, commands) open each item's section with what it
    does; the syntax lines before that are skipped."""
    leaf = _leaf(heading)
    words = leaf.split()
    if (not 1 <= len(words) <= 5 or set(w.lower() for w in words) <= _GENERIC_HEADINGS or leaf.endswith("?")
            or words[0].lower() in ("list", "table", "index", "appendix") or " and " in leaf):
        return None
    prose: list[str] = []
    for sent in sentences(text):
        plain = strip_bullet(sent)
        tokens = plain.split()
        alpha = sum(t.isalpha() for t in tokens)
        if len(tokens) >= 5 and alpha >= 0.6 * len(tokens) and "|" not in plain and "=" not in plain \
                and not plain.endswith(":"):
            prose.append(_sentence(plain))
        elif prose:
            break
        if len(prose) == 2 or (prose and len(prose[0].split()) >= 18):
            break
    if not prose:
        return None
    question: Asked
    if re.match(r"^[A-Z]+ \w+$", leaf) and leaf.split()[0] in ("PRAGMA", "OPTION", "COMMAND"):
        question = _pick(leaf, (f"What does {leaf} do?", f"What is {leaf} used for?", f"What is {leaf} for?"))
    elif re.match(r"^[\w.]+\(.*\)$", leaf):
        question = f"What does the {leaf.split('(')[0]}() function do?"
    elif re.match(r"^(The )?[\w-]+ (option|setting|parameter|flag|command|statement|clause|function|pragma)$",
                  leaf, re.I):
        question = f"What does the {re.sub(r'^The ', '', leaf)} do?"
    elif words[0].lower() in ("how", "what", "when", "why", "who", "where"):
        return None  # question-like headings are handled by the procedure rule
    elif (len(heading.split(" > ")) > 1 and len(words) <= 4 and not re.search(r"\d", leaf)
          and not words[-1].endswith("s") and not words[0].lower().endswith("ing")
          and content_tokens(leaf) <= content_tokens(prose[0])):
        term = _lower_first(leaf) if len(words) > 1 else leaf  # a term the section defines
        question = _pick(leaf, (f"What is {term}?", f"What exactly is {term}?", f"Can you explain what {term} is?",
                                f"What do we mean by {term}?"))
    else:
        return None
    return question, " ".join(prose), "lead"


# --- tables and lists ------------------------------------------------------------------------------------
_DESCRIBES = ("what it does", "what it is for", "description", "definition", "meaning")
_PEOPLE = frozenset("approver owner contact reviewer lead manager assignee approvers owners contacts".split())
_AMOUNTS = frozenset("amount value rate cost price limit number".split())
_COMPARATIVE = re.compile(r"^(?:up to|above|below|over|under|more than|less than|at least|at most)\b", re.I)


def _row_question(header: list[str], row: list[str], col: str, value: str, topic: str) -> tuple[Asked, str] | None:
    """One cell as a question about its row: "What's the deploy window for Friday?"."""
    key, name = _cell_case(row[0]), _lower_first(col)
    if name.lower() in _DESCRIBES:
        if "is for" in name:
            return f"What is {row[0]} for?", f"{row[0]} is for {_lower_first(value).rstrip('.')}."
        if "does" in name:  # a command table: ask what it does, or which command does it
            kind = _lower_first(header[0]).rstrip("s") or "command"
            return _pick(row[0], (f"What does {row[0]} do?", f"Which {kind} {_lower_first(value).rstrip('.')}?")), \
                f"{row[0]} {_lower_first(value).rstrip('.')}."
        meaning = f"{row[0]} means: {value.rstrip('.')}."
        return _pick(row[0], (f"What does {row[0]} mean?", f"What counts as {row[0]}?")), meaning
    if len(value.split()) > 14:
        return None
    answer = f"{row[0]}: {value.rstrip('.')}."
    if m := re.match(r"^(how|when|where|what) you (.+)$", name, re.I):
        return f"{m.group(1).capitalize()} do I {m.group(2)} for {row[0]}?".replace("access for", "access to"), answer
    if re.match(r"^(who|when|where|how|what) ", name, re.I):
        joiner = "after" if re.search(rf"\d+ {_UNIT}$", key) else "for"
        if m := re.match(r"^who (is|are) (\w+)$", name, re.I):  # "Who is paged" -> "Primary on-call is paged after …"
            answer = f"{value.rstrip('.')} {m.group(1).lower()} {m.group(2)} {joiner} {key}."
        return f"{name[0].upper() + name[1:]} {joiner} {key}?", answer
    if _COMPARATIVE.match(key) and (noun := re.search(r"\b(?:per|of) (\w+)$", header[0])):
        key = f"a {noun.group(1)} {key}"  # "Amount per claim" / "Above $500" -> "a claim above $500"
    if name.lower() in _AMOUNTS and (m := re.fullmatch(r"([^,()]+), ([^,]+)", row[0])):
        what = _cell_case(m.group(1)).lower() if m.group(1)[1:].islower() else m.group(1)
        return (f"What's the {what} for {m.group(2)}?",  # "Hotel cap, standard cities" -> the hotel cap for ...
                f"The {what} for {m.group(2)} is {_cell_case(value).rstrip('.')}.")
    if name.lower() in _PEOPLE:  # "Automatically approved if within policy" is no person: quote the row
        person = value.split()[0].lower() not in _LOWERABLE - {"your"}
        return f"Who is the {name} for {key}?", (f"The {name} for {key} is {_cell_case(value).rstrip('.')}."
                                                  if person else answer)
    # "Window" in a table under "Deploy windows" is the deploy window.
    last = topic.split()[-1].lower() if topic else ""
    if last and name.lower() == re.sub(r"s$", "", last) and len(topic.split()) <= 3:
        name = re.sub(r"s$", "", topic.lower())
    verb = "are" if name.endswith("s") and not name.endswith("ss") else "is"
    question = _pick(f"{row[0]}|{col}", (f"What {verb} the {name} for {key}?", f"What's the {name} for {key}?")
                     if verb == "is" else (f"What are the {name} for {key}?",))
    return question, f"The {name} for {key} {verb} {_cell_case(value).rstrip('.')}."


def _table_pairs(text: str, topic: str) -> list[tuple[Asked, str, str]]:
    lines = [ln for ln in text.splitlines() if ln.count("|") >= 1 and not re.fullmatch(r"[\s|:-]+", ln)]
    if len(lines) < 2:
        return []
    cells = lambda line: [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]  # noqa: E731
    header, out = cells(lines[0]), []
    keys = [cells(line)[0] for line in lines[1:]]
    if len(set(keys)) < len(keys) or all(re.fullmatch(r"[\d.,-]+", k) for k in keys):
        return []  # a repeated or bare-number key ("for 1?") would ask one question with several answers
    for line in lines[1:]:
        row = cells(line)
        if len(row) != len(header) or not row[0]:
            continue
        for col, value in zip(header[1:], row[1:]):
            if value and col and (made := _row_question(header, row, col, value, topic)):
                out.append((made[0], made[1], "table"))
    return out


def _procedure_question(heading: str) -> Asked | None:
    parts = [p for p in heading.split(" > ") if p]
    if not parts:
        return None
    leaf, parent = _topic(heading), _topic(" > ".join(parts[:-1])) if len(parts) > 1 else ""
    if m := re.match(r"^[Hh]ow to (.+)$", leaf):
        what = re.sub(r"\b(it|them)$", parent.lower() or r"\1", m.group(1))
        return f"How do I {what}?", f"What are the steps to {what}?"  # a procedure is asked "How do I"
    if m := re.match(r"^[Hh]ow (an?|the) (.+) (\w+s)$", leaf):
        return f"How does {m.group(1)} {m.group(2)} {_base_verb(m.group(3))}?"
    if m := re.match(r"^[Ww]hat (.+) does$", leaf):
        return f"What does {m.group(1)} do?"
    if (first := leaf.split()[0]).lower().endswith("ing") and len(first) > 5:
        what = f"{_base_verb(first)} {' '.join(leaf.split()[1:])}".strip()
        return f"How do I {what}?", f"What are the steps to {what}?"
    if m := re.match(r"^(.+) (procedure|process|steps)$", leaf.lower()):
        return _pick(heading, (f"What is the {leaf.lower()}?", f"How does the {m.group(1)} {m.group(2)} work?"))
    return _pick(heading, (f"What are the steps for {leaf.lower()}?", f"How do I go about {leaf.lower()}?"))


def _gist(step: str) -> str:
    """A step's first sentence, or two when the first is only a title ("3. Canary. `shipit` sends ...")."""
    parts = sentences(step) or [step]
    gist = " ".join(parts[:2]) if len(parts[0].split()) < 4 else parts[0]
    return _sentence(gist.rstrip("."))


def _list_pairs(text: str, heading: str) -> list[tuple[Asked, str, str]]:
    steps = [strip_bullet(ln) for ln in text.splitlines() if _STEP.match(ln)]
    lines = [line for line in (strip_bullet(ln) for ln in text.splitlines() if ln.strip()) if line.split()]
    orders = [ln for ln in lines if ln.split()[0].lower() in _IMPERATIVES]
    howto = re.match(r"^(how to|\w+ing (?:a|an|the|to|your)\b)|.*\b(procedure|process|steps)$", _topic(heading), re.I)
    if len(steps) < 2 and howto and len(orders) >= 2 and len(orders) >= 0.6 * len(lines):
        steps = orders  # "How to back up" with one instruction a line: the list lost its numbers in parsing
    checks = [strip_bullet(ln) for ln in text.splitlines() if re.match(r"^\s*- \[[ xX]\]", ln)]
    out: list[tuple[Asked, str, str]] = []
    if len(steps) >= 2 and not re.search(r"\(page \d+\)", text) and (question := _procedure_question(heading)):
        firsts = [_gist(s) for s in steps[:7]]
        numbered = any(_STEP.match(ln) for ln in text.splitlines())  # numbers the passage lacks are unsupported
        out.append((question, " ".join(f"{n}. {s}" if numbered else s for n, s in enumerate(firsts, 1)), "procedure"))
    if len(checks) >= 2 and heading:
        parts = [_topic(p) for p in heading.split(" > ")]
        where = (f"the {parts[-2].lower()} for {parts[-1].lower()}" if len(parts) > 2
                 else f"the {parts[-1].lower()} checklist")
        firsts = [_sentence((sentences(s) or [s])[0].rstrip(".")) for s in checks[:6]]
        out.append((_pick(heading, (f"What is on {where}?", f"What do I need to do for {where}?")),
                    " ".join(firsts), "checklist"))
    return out


# --- naming the subject, and the unanswerable near-topic questions ---------------------------------------
_POLICY_WORDS = re.compile(r"\b(policy|policies|rules|guidelines|procedure|process|program|programme|handbook|"
                           r"guide|manual)$")
# An item of reference docs (`PRAGMA cache_size`, `sqlite3_open()`, `--readonly`), not a topic in prose.
_CODE_LIKE = re.compile(r"[_`(]|\b[A-Z]{2,}\b|(?:^| )--?\w")
_GERUND_OBJECT = frozenset("a an the to through for with in into on your our up out".split())


def _subject_topic(heading: str, passage: str) -> str:
    """The nearest heading that names a topic ("Where to find things" and "Questions" do not), in
    sentence case: a Title-Case word stays capitalised only where the passage writes it so (a name)."""
    parts = [p for p in heading.split(" > ") if p]
    for n in range(len(parts), 0, -1):
        topic = _leaf(parts[n - 1]).split(": ")[-1]
        words = topic.lower().split()
        if (words and len(words) <= 6 and not set(words) <= _GENERIC_HEADINGS
                and words[0] not in ("how", "what", "when", "why", "who", "where", "after", "before")):
            name = lambda w: re.search(rf"(?<=[a-z,] ){re.escape(w)}\b", passage)  # noqa: E731
            return " ".join(w.lower() if re.fullmatch(r"[A-Z][a-z]+(?:-[A-Za-z][a-z]+)*", w) and not name(w) else w
                            for w in topic.split())
    return ""


def _anchor(question: str, heading: str, passage: str) -> str:
    """Weave the topic into a question that does not name its subject: "… when booking through Wayfare?",
    "… under the paging and escalation policy?", "… for laptops and devices?", "… in the rotation?"."""
    topic = _subject_topic(heading, passage)
    if not topic or names_subject(question, heading, passage):
        return question
    bare, words = re.sub(r"^the ", "", topic, flags=re.I), topic.split()
    if _CODE_LIKE.search(topic):
        tail = f"with {topic}"  # an item of reference docs: "… with PRAGMA cache_size?"
    elif words[0].lower().endswith("ing") and (len(words) == 1 or words[1].lower() in _GERUND_OBJECT):
        tail = f"when {bare}"  # "Booking through Wayfare" is something you do
    elif _POLICY_WORDS.search(bare.lower()):
        tail = f"under the {bare}"
    elif re.search(r"[^s]s$", bare.split()[0]) or re.search(r"[^s]s$", bare.split()[-1]):
        tail = f"for {bare}"
    else:
        tail = f"in the {bare}"
    return f"{question.rstrip('?')} {tail}?"


def _finish(question: str, heading: str, passage: str, protected: set[str]) -> str | None:
    """Paraphrase, first person, the subject named; None when it would still need the passage."""
    question = _first_person(_anchor(_paraphrase(re.sub(r"\s+", " ", question).strip(), protected), heading, passage))
    question = question[0].upper() + question[1:]
    return None if is_leaky(question) or not names_subject(question, heading, passage) else question


# (key word, question): the key is what the question asks for; the section must not use it, nor may
# the whole document (distill checks). Tools get product questions, topics get questions about rules.
_TOOL_ASKS = [
    ("cost", "How much does {s} cost?"), ("version", "Which version of {s} should I install?"),
    ("version", "What's the latest version of {s}?"), ("product owner", "Who is the product owner of {s}?"),
    ("introduced", "When was {s} first introduced?"), ("android", "Is there an official Android app for {s}?"),
]
_TOPIC_ASKS = [
    ("owns", "Who owns {rules}?"), ("updated", "When {was} {rules} last updated?"),
    ("introduced", "When {was} {rules} introduced?"), ("course", "Is there a training course on {rules}?"),
]
_ITEM_ASKS = [
    ("deprecated", "Is {s} deprecated?"), ("version", "Since which version is {s} available?"),
    ("thread", "Is {s} thread-safe?"),
]
# Words whose presence makes a question of that kind answerable after all ("$75" answers a price).
_ALSO_ANSWERS = {"cost": r"[$€£]\s?\d|\b(price|fee|pay|paid|free)\b", "introduced": r"\b(19|20)\d\d\b|\bsince\b",
                 "updated": r"\b(19|20)\d\d\b|\b(revised|effective|changed)\b", "owns": r"\b(own|owner|responsible)",
                 "version": r"\b\d+\.\d+\.\d+\b"}


def _tools(text: str) -> list[str]:
    """Products the section names as such: "Ledgerly, our expense tool", "the Beacon app", `shipit status`."""
    found = re.findall(r"\b([A-Z][a-z]+[A-Za-z]*),? our [a-z ]*?(?:tool|portal|app|system|service|platform)\b", text)
    found += re.findall(r"\b(?:the )?([A-Z][a-z]+[A-Za-z]*) (?:app|portal|CLI|bot|tool)\b", text)
    found += re.findall(r"`([a-z][a-z0-9-]{2,20}) [a-z<-]", text)
    return list(dict.fromkeys(found))


def unanswerable(chunks: list[dict], answerable: int) -> list[QAPair]:
    """Near-topic questions the section does not answer, about REFUSAL_RATE per answerable pair: which
    sections get one is decided by a stable hash, so the share holds over a corpus, not per section."""
    heading, text = chunks[0].get("heading") or "", "\n".join(c["text"] for c in chunks)
    wanted = REFUSAL_RATE * answerable
    count = int(wanted) + (_stable("refuse", heading, text) < wanted - int(wanted))  # content, not path-based ids
    if not count:
        return []
    topic = _subject_topic(heading, text)
    policy = bool(_POLICY_WORDS.search(topic.lower()))
    rules = "" if not topic or len(topic.split()) > 4 or (topic.startswith("the ") and not policy) else (
        f"the {re.sub(r'^the ', '', topic)}" if policy else f"the rules on {topic}")  # not "the rules on the IC"
    options = [(key, ask.format(s=tool)) for tool in _tools(text) for key, ask in _TOOL_ASKS]
    if _CODE_LIKE.search(topic):
        options += [(key, ask.format(s=topic)) for key, ask in _ITEM_ASKS]
    elif rules:
        options += [(key, ask.format(rules=rules, was="was" if policy else "were")) for key, ask in _TOPIC_ASKS]
    options.sort(key=lambda o: _stable(heading, o[1]))  # a varied but fixed choice
    out: list[QAPair] = []
    for key, question in options:
        also = _ALSO_ANSWERS.get(key.split()[-1])
        if (stems(key) & stems(text + " " + heading, split_compounds=True) or (also and re.search(also, text, re.I))
                or not refusal_holds(question, text, heading) or is_leaky(question)
                or not names_subject(question, heading, text)):
            continue
        out.append(QAPair(question, NOT_FOUND, reasoning=f"offline rule: unanswerable (asks for: {key})",
                          chunk_ids=[chunks[0]["id"]]))
        if len(out) == count:
            break
    return out


_THIS_ITEM = r"\b[Tt]his (?:pragma|function|option|command|setting|statement|clause|parameter)\b"


def candidates(text: str, heading: str, with_lead: bool = False) -> list[tuple[str, str, str]]:
    """(question, answer, rule) candidates for one chunk, each standing alone: named subject, no deixis."""
    topic = _topic(heading)
    found = _list_pairs(text, heading) + _table_pairs(text, topic) + _sentence_pairs(text)
    if lead := lead_pair(text, heading) if with_lead else None:
        found.insert(0, lead)  # the section opens with what its subject is or does
    protected = stems(heading)
    out = []
    for asked, answer, rule in found:
        this = topic if topic[:1].isupper() else f"the {topic}"
        wordings = [re.sub(_THIS_ITEM, this, q) if topic else q for q in ([asked] if isinstance(asked, str) else asked)]
        question = next((q for q in (_finish(w, heading, text, protected) for w in wordings) if q), None)
        if not question:
            continue  # distill would drop it: spend the budget on questions that stand alone
        answer = re.sub(r"[ \t]+", " ", answer).strip()
        out.append((question, answer if answer.endswith((".", "!", "?")) else answer + ".", rule))
    return out
