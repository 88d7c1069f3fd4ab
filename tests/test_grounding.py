"""The sentence-level grounding check and quote choice, with the bundled embedder (real MiniLM, offline).

Each case is a draft a 135M model really writes: an invented sentence next to a copied one, an echo of
the question with a citation, a paraphrase in the user's words, a table-of-contents line that shares
the question's words.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.grounding import EmbeddingCache, check_draft, choose_quote, is_navigation, named_rows, names, unknown_names
from storage.text import split_sentences, terms


@dataclass
class P:
    text: str
    source: str = "handbook.md"
    page: int | None = None
    heading: str | None = None


@pytest.fixture(scope="module")
def embed():
    from storage.embeddings import get_embedder

    return get_embedder().encode


TRAVEL = [
    P("Hotel costs are reimbursed up to 180 dollars per night. Receipts must be submitted within 30 days "
      "of the trip through Ledgerly.", heading="Travel > Hotels"),
    P("The quarterly planning meeting reviews the roadmap. Team leads present their goals.", heading="Planning"),
]
EXIT = [P("The exit status of a command is the value returned by the waitpid system call. Exit statuses "
          "fall between 0 and 255, though the shell may use values above 125 specially.",
          heading="Exit Status")]


def test_invented_sentence_is_dropped_and_the_supported_one_kept(embed):
    draft = "Hotels are reimbursed up to 180 dollars per night [1]. For three nights that is 180 * 3 = 560 dollars."
    result = check_draft(draft, "How much can I spend on a hotel?", TRAVEL, embed)
    assert result.supported
    assert "180 dollars per night" in result.answer and "560" not in result.answer
    assert [c.reason for c in result.checks] == ["supported", "number"]


def test_invented_meeting_date_is_dropped(embed):
    draft = "The quarterly planning meeting reviews the roadmap [2]. The next meeting is on March 14."
    result = check_draft(draft, "What happens at the planning meeting?", TRAVEL, embed)
    assert "March" not in result.answer and "roadmap" in result.answer
    assert result.cited == [2]


def test_whole_invention_is_not_shown(embed):
    result = check_draft("The office wifi password is swordfish and it changes every month.",
                         "What is the wifi password?", TRAVEL, embed)
    assert not result.supported and result.answer == ""
    assert result.checks[0].reason == "unsupported"


def test_invented_place_next_to_a_copied_sentence_is_dropped(embed):
    draft = "The planning meeting reviews the roadmap. It is held in Berlin with the whole company."
    result = check_draft(draft, "What happens at the planning meeting?", TRAVEL, embed)
    assert "roadmap" in result.answer and "Berlin" not in result.answer


def test_passage_words_mixed_with_invention_are_not_enough(embed):
    result = check_draft("Hotel receipts are reimbursed within 30 days by the finance team.",
                         "When are hotel receipts reimbursed?", TRAVEL, embed)
    assert not result.supported, result.checks


def test_echoed_question_is_not_an_answer(embed):
    question = "What's the highest exit status a command can hand back to the shell?"
    result = check_draft("What's the highest exit status a command can hand back to the shell [1]?", question, EXIT, embed)
    assert not result.supported
    assert result.checks[0].reason == "echo"


def test_paraphrase_in_the_users_words_is_supported(embed):
    result = check_draft("You have 30 days after the trip to hand in your receipts in Ledgerly.",
                         "When are receipts due?", TRAVEL, embed)
    assert result.supported and result.cited == [1], result.checks


def test_wrong_marker_is_replaced_by_the_supporting_passage(embed):
    result = check_draft("Receipts must be submitted within 30 days of the trip [2][7].", "When are receipts due?",
                         TRAVEL, embed)
    assert result.cited == [1] and "[2]" not in result.answer and "[7]" not in result.answer


def test_lexical_only_check_is_stricter_than_with_meaning():
    result = check_draft("Hotels are reimbursed up to 180 dollars per night.", "hotel limit?", TRAVEL, None)
    assert result.supported  # every novel word is there: no embedder needed


def test_quote_skips_table_of_contents_lines(embed):
    toc = P("Contents\nShell Builtin Commands .......... 41\nBourne Shell Variables .......... 67\n"
            "Bash is an acronym for the Bourne-Again SHell, a pun on Stephen Bourne.", heading="Introduction")
    quote = choose_quote("What does the name bash stand for?", [toc], embed)
    assert quote is not None and "Bourne-Again SHell" in quote.answer and "...." not in quote.answer


def test_quote_matches_meaning_not_only_words(embed):
    quote = choose_quote("How long do I have to hand in receipts after travelling?", TRAVEL, embed)
    assert quote is not None and "30 days" in quote.answer and quote.cited == [1]


def test_navigation_lines():
    assert is_navigation("Shell Builtin Commands ........ 41")
    assert is_navigation("grep, 12, 45, 78")
    assert is_navigation("Exit Status")
    assert not is_navigation("Receipts must be submitted within 30 days.")


def test_one_analyzer_for_every_language():
    assert {"deploy", "roll"} <= terms("Deploys were rolled back")  # Snowball stems, as BM25 indexes
    assert "отпуск" in terms("Отпуск оформляется заранее")  # Cyrillic words survive
    assert "报销" in terms("报销流程")  # CJK runs give bigrams
    assert split_sentences("Отпуск оформляется заранее. Заявление подаётся за две недели.") == [
        "Отпуск оформляется заранее.", "Заявление подаётся за две недели."]
    assert split_sentences("请提交发票。审批需要三天。") == ["请提交发票。", "审批需要三天。"]


def test_a_figure_with_the_wrong_unit_is_not_supported(embed):
    steps = [P("1. Acknowledge a page within 15 minutes.\n2. Start working on a SEV1 within 5 minutes.")]
    wrong = check_draft("Acknowledge a page within 1 minute.", "How fast must I acknowledge a page?", steps, embed)
    right = check_draft("Acknowledge a page within 15 minutes.", "How fast must I acknowledge a page?", steps, embed)
    assert not wrong.supported and wrong.checks[0].reason == "number"
    assert right.supported


def test_table_rows_are_quoted_whole_with_their_header(embed):
    table = [P("City | Tier | Hotel cap | Meals\nLondon | 1 | $380 | $120\nLisbon | 2 | $220 | $80",
               heading="Travel > Per diem")]
    quote = choose_quote("What is the hotel cap in London?", table, embed)
    assert quote is not None and "London | 1 | $380 | $120" in quote.answer
    assert quote.answer.index("Hotel cap") < quote.answer.index("London")


SEVERITY = [P("When in doubt, declare the higher severity. Every SEV1 and SEV2 needs a blameless postmortem.",
              heading="On-call > After the incident"),
            P("Severity | Definition | Update cadence\nSEV1 | Customer-facing outage or data loss. | Every 30 minutes"
              "\nSEV2 | Significant degradation with a workaround. | Every 60 minutes\nSEV3 | Minor impact. | Daily",
              heading="On-call > Severity levels")]


def test_rows_the_question_names_are_quoted_with_their_header(embed):
    quote = choose_quote("What's the difference between a SEV1 and a SEV2?", SEVERITY, embed)
    assert quote is not None and quote.cited == [2]
    assert "Customer-facing outage" in quote.answer and "Significant degradation" in quote.answer
    assert "Minor impact" not in quote.answer and "postmortem" not in quote.answer
    assert quote.answer.index("Definition") < quote.answer.index("SEV1 |")


def test_a_row_is_named_by_its_whole_first_cell_only(embed):
    hosts = [P("host | os | cores\nci-mac-1 | macOS 15 | 8\nci-mac-2 | macOS 14 | 4", heading="CI > Hosts")]
    quote = choose_quote("How many cores does ci-mac-1 have?", hosts, embed)
    assert quote is not None and "ci-mac-1 | macOS 15 | 8" in quote.answer and "ci-mac-2" not in quote.answer
    assert named_rows("How many cores does a mac have?", hosts[0].text) is None  # "mac" names no row


CHINESE = [P("出差住宿每晚最高报销600元。超过标准的部分由员工自行承担。", source="baoxiao.md", heading="报销政策 > 住宿"),
           P("出租车费用必须提供发票，并在三十天内提交报销申请。", source="baoxiao.md", heading="报销政策 > 交通")]


def test_chinese_sentences_are_statements_not_navigation(embed):
    # One \\w+ run, but seven words: an ASCII word count made every Chinese sentence a "short label".
    assert not is_navigation("出差住宿每晚最高报销600元。") and is_navigation("报销政策")
    quote = choose_quote("出差住宿每晚最多可以报销多少钱？", CHINESE, embed)
    assert quote is not None and "600元" in quote.answer and quote.cited == [1]
    assert "600元。超过" in quote.answer  # CJK sentences are joined without a space
    checked = check_draft("出差住宿每晚最高报销600元 [1]。", "出差住宿每晚最多可以报销多少钱？", CHINESE, embed)
    assert checked.supported and "600元" in checked.answer


def test_names_are_acronyms_mixed_case_digits_and_capitalized_words_mid_sentence():
    assert names("How do I run SQLite aggregate queries on a GPU to make them faster?") == ["SQLite", "GPU"]
    assert names("Which Python version do I need for FTS5?") == ["Python", "FTS5"]
    assert names("How do I compile it to WebAssembly for a browser tab?") == ["WebAssembly"]
    # Sentence starts and "I" are capitalized by grammar, not because they name something.
    assert names("Where do I file expenses? Receipts go where?") == []


def test_german_nouns_are_not_names():
    assert names("Wie viele Überstunden müssen vorher genehmigt werden?") == []
    assert names("Wie viele Überstunden darf ich im Q3 machen?") == ["Q3"]  # letters with digits still are


def test_a_name_the_documents_never_mention_is_unknown():
    corpus = terms("SQLite aggregate queries run on the CPU; see the Python sqlite3 module.")
    known = lambda wanted: wanted & corpus  # noqa: E731 - the BM25 vocabulary's role
    assert unknown_names("How do I run SQLite aggregate queries on a GPU?", known) == ["GPU"]
    assert unknown_names("Which Python version has the sqlite3 module?", known) == []
    assert names("Can I back up to Amazon S3 nightly?") == ["Amazon S3"]


def test_a_name_partly_in_the_documents_is_not_unknown():
    corpus = terms("Working a holiday as primary earns an extra day of time off in lieu.")
    known = lambda wanted: wanted & corpus  # noqa: E731
    # "Christmas Day" is the documents' "holiday": refusing it would refuse an answerable question.
    assert unknown_names("If I work Christmas Day as the primary, do I get anything extra?", known) == []


def test_a_heading_or_breadcrumb_is_not_an_answer(embed):
    passages = [P("Roll back first, investigate second. Run shipit rollback <service> --to <release>.",
                  source="deploys.md", heading="Deploying to Production > Rollback procedure")]
    for draft in ('"Deploying to Production > Rollback procedure" [1]', "Rollback procedure of Deploying to Production [1]."):
        checked = check_draft(draft, "and the canary?", passages, embed)
        assert not checked.supported and checked.checks[0].reason == "navigation", draft


def test_a_page_describing_itself_is_never_quoted(embed):
    passages = [P("This page covers when you may deploy, how a deploy progresses, how to roll back, and how to use "
                  "feature flags. Roll back first, investigate second: run shipit rollback <service> --to <release>.",
                  heading="Deploying to Production")]
    quote = choose_quote("How do I roll back a deploy?", passages, embed)
    assert quote is not None and "This page covers" not in quote.answer and "shipit rollback" in quote.answer


def test_embedding_cache_embeds_each_text_once_and_stays_bounded(embed):
    calls: list[list[str]] = []

    def counting(texts: list[str]):
        calls.append(list(texts))
        return embed(texts)

    cache = EmbeddingCache(counting, max_items=3)
    first = cache(["canary traffic", "rollback", "canary traffic"])
    assert calls == [["canary traffic", "rollback"]]  # duplicates embedded once, in one batch
    again = cache(["rollback", "canary traffic"])
    assert len(calls) == 1 and (again == first[[1, 0]]).all()  # served from memory, same vectors
    cache(["a", "b", "c"])
    assert len(cache._vectors) == 3 and "rollback" not in cache._vectors  # least recently used went first


def test_code_blocks_are_judged_whole_and_kept_byte_for_byte(embed):
    passage = P("Drain traffic first, then run the rollback:\n```bash\n# drain traffic first\n"
                "shipit drain api --to 0\nshipit rollback api --to v41\n```", heading="Rollback")
    code = "```bash\n# drain traffic first\nshipit drain api --to 0\nshipit rollback api --to v41\n```"
    invented = "```bash\nshipit nuke api --force\n```"
    draft = f"Drain traffic first, then run the rollback [1]:\n\n{code}\n\nOr skip draining entirely:\n\n{invented}"
    checked = check_draft(draft, "How do I roll back the api?", [passage], embed)
    assert checked.supported and code in checked.answer  # whole, no [n] inside, lines not joined
    assert "nuke" not in checked.answer  # a block the passage doesn't hold is dropped like a sentence
    assert checked.answer.startswith("Drain traffic first, then run the rollback [1]:\n\n```bash")


def test_kept_lines_keep_their_line_breaks(embed):
    passage = P("Announce the rollback in #plat-releases. Run shipit history to find the last good release. "
                "Run shipit rollback with that release.", heading="Rollback")
    draft = ("Announce the rollback in #plat-releases [1].\n"
             "Run shipit history to find the last good release [1].\n"
             "Run shipit rollback with that release [1].")
    assert check_draft(draft, "How do I roll back?", [passage], embed).answer == draft


def test_a_figure_written_as_a_word_must_match_too(embed):
    passage = [P("The Q3 review meeting is held on the first Monday of October in the main hall.", heading="Q3 review")]
    wrong = check_draft("The Q3 review meeting is held on the third Monday of October [1].", "When is the Q3 review?",
                        passage, embed)
    assert not wrong.supported and wrong.checks[0].reason == "number"
    right = check_draft("The Q3 review meeting is held on the first Monday of October [1].", "When is the Q3 review?",
                        passage, embed)
    assert right.supported


def test_a_quotation_must_be_the_documents_own_words(embed):
    passage = [P("Überstunden werden innerhalb von drei Monaten durch Freizeit ausgeglichen.", heading="Überstunden")]
    misquoted = '"Ueberstunden werden innerhalb von drei Monaten durch Freizeit ausgemacht." [1]'
    checked = check_draft(misquoted, "Innerhalb welcher Frist werden Überstunden ausgeglichen?", passage, embed)
    assert not checked.supported and checked.checks[0].reason == "misquote"
    exact = '"Überstunden werden innerhalb von drei Monaten durch Freizeit ausgeglichen." [1]'
    assert check_draft(exact, "Innerhalb welcher Frist werden Überstunden ausgeglichen?", passage, embed).supported


ONCALL = [
    P("Acknowledge a page within 15 minutes. Acknowledging means you are looking at it. The secondary is "
      "paged at the 15-minute mark.", heading="On-call > Paging", source="oncall.md"),
    P("Postmortems are published within 5 business days. Action items are tracked in PLAT.",
      heading="On-call > After the incident", source="oncall.md"),
    P("Expenses above 500 dollars need manager approval. Receipts are uploaded within 30 days.",
      heading="Expenses > Approval", source="expenses.md"),
]


def test_excerpts_are_the_best_runs_as_copies_of_their_passages(embed):
    from agent.grounding import excerpts

    shown, at = excerpts("When are postmortems published, and how long do I have to acknowledge a page?",
                         ONCALL, embed, k=2)
    assert len(shown) == 2 and at is None
    assert {s.heading for s in shown} == {"On-call > Paging", "On-call > After the incident"}
    assert all(s.source == "oncall.md" for s in shown)
    assert all(any(s.text in p.text for p in ONCALL) for s in shown)  # excerpts, never rewritten text
    # Nothing matches: the passages are shown as they are.
    assert excerpts("Who maintains the coffee machine?", ONCALL, embed, k=2) == (ONCALL, None)


def test_excerpts_never_overlap_within_a_passage(embed):
    from agent.grounding import excerpts

    shown, _ = excerpts("How long do I have to acknowledge a page?", ONCALL, embed, k=3)
    firsts = [(s.source, s.heading, split_sentences(s.text)[0]) for s in shown]
    assert len(set(firsts)) == len(firsts)
    texts = [s.text for s in shown if s.heading == "On-call > Paging"]
    assert len(texts) <= 1  # its three sentences are one run: a second run from it would repeat them


def test_a_training_answer_is_always_in_an_excerpt_and_its_position_is_returned(embed):
    import random

    from agent.grounding import excerpts

    # The question's words point at the paging passage; the answer sits in the expenses one.
    answer = "Receipts are uploaded within 30 days."
    shown, at = excerpts("How long do I have to acknowledge a page?", ONCALL, embed, k=2, answer=answer,
                         rng=random.Random(1))
    assert at is not None and 1 <= at <= 2 and answer in shown[at - 1].text
    assert len(shown) == 2
    # An answer no passage supports gets no position: the caller keeps the whole passages.
    assert excerpts("How long do I have to acknowledge a page?", ONCALL, embed, k=2,
                    answer="Badges are printed by the front desk on Mondays.")[1] is None


def test_a_fragment_is_not_an_answer(embed):
    passage = [P("Call sqlite3_open() with the file name in order to open the database connection. The handle "
                 "is returned through the second argument.", source="c3ref.html", heading="Opening A New Database")]
    fragment = check_draft("in order to open the database connection [1].", "How do I stream replicas?", passage, embed)
    assert not fragment.supported and fragment.answer == "" and fragment.checks[0].reason == "fragment"
    whole = check_draft("Call sqlite3_open() with the file name to open the database connection [1].",
                        "How do I open a database?", passage, embed)
    assert whole.supported  # the same words as a sentence of its own are an answer
    lower_name = check_draft("sqlite3_open() returns the handle through the second argument [1].",
                             "How do I get the handle?", passage, embed)
    assert lower_name.supported  # a sentence may start with a lowercase identifier


def test_a_draft_that_opens_with_an_invention_is_not_worth_finishing(embed):
    from agent.grounding import can_still_pass

    question = "How much is the hotel allowance?"
    good = check_draft("Hotel costs are reimbursed up to 180 dollars per night [1].", question, TRAVEL, embed)
    assert can_still_pass(good, finished=1, max_sentences=4)
    invented = check_draft("The quarterly offsite is held in Lisbon every March with a gala dinner [2].", question,
                           TRAVEL, embed)
    assert not invented.supported and not can_still_pass(invented, finished=1, max_sentences=4)
    # Supported first, then two inventions with one sentence left: 1 + 1 of 4 could still reach half...
    mixed = check_draft("Hotel costs are reimbursed up to 180 dollars per night [1]. The quarterly offsite is held "
                        "in Lisbon every March. Team leads fly business class to every offsite.", question, TRAVEL,
                        embed)
    assert can_still_pass(mixed, finished=3, max_sentences=4)
    # ... but not with no sentence left: the check will drop it, so generation stops.
    assert not can_still_pass(mixed, finished=3, max_sentences=3) and not mixed.supported


def test_a_date_the_passage_does_not_give_is_not_supported(embed):
    # A new user saw "October 1st" shown as grounded where the document says "the first Monday of October".
    passage = [P("The travel budget for the platform team is 12000 euros per year. The Q3 review meeting is held "
                 "on the first Monday of October.", source="Budget [draft].md", heading="Budget")]
    draft = "The travel budget for the platform team is 12000 euros [1]. The Q3 review meeting was held on October 1st [1]."
    checked = check_draft(draft, "What is the travel budget for the platform team?", passage, embed)
    assert "October 1st" not in checked.answer and "12000 euros" in checked.answer
    assert [c.reason for c in checked.checks][-1] == "number"
    freeze = [P("The December freeze runs from December 15 to January 5 (inclusive).", heading="Freeze")]
    assert check_draft("The freeze runs from December 15 to January 5 [1].", "When is the freeze?", freeze,
                       embed).supported  # the same dates, written the same way or as '15th of December'
    assert check_draft("The freeze starts on the 15th of December [1].", "When does the freeze start?", freeze,
                       embed).supported
