"""Build the sample PDF of the demo knowledge base: `storage/samples/handbook/travel-policy.pdf`.

Run from the repository root:

    python bench/make_sample_pdf.py

The sample knowledge base (`storage/samples/handbook/`) is the fictional handbook of the
Northwind Robotics platform team. `flywheel demo` ingests it and the tests and
`storage/samples/questions.jsonl` ask questions about it, so its facts are load-bearing:
the five Markdown pages (on-call, deploys, expenses, onboarding, security) are written by
hand, and this script writes the one PDF, a six-page Travel Policy. The PDF exists to
exercise the PDF path of ingestion: a title page, an outline (bookmarks), larger headings,
tables, and a running header and footer on every page that the parser should not mistake
for content. No README lives in that folder on purpose: it would be ingested as a document.

Each page's text is authored explicitly (one Markdown string per physical page) rather
than flowed, because `questions.jsonl` names the page each answer is on:

    page 1  title page, version 3.2, contents
    page 2  1. Scope and booking (Wayfare portal, 14 days ahead, approvals)
    page 3  2. Flights (booking class rules, baggage, loyalty points)
    page 4  3. International hotels and per diem (city tier table)
    page 5  4. Ground transport (rail under 4 hours, mileage $0.67, rental cars)
    page 6  5. International travel, insurance and emergencies (Harbor Assist, hotline)

The build is reproducible: fixed metadata dates, `reproducible=True`, no new file ID.
The script asserts that every page's text fits its box, so a fact can never silently
move to another page. The script edits only the PDF; if you change a fact here, update
`storage/samples/questions.jsonl` too.
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

import pymupdf

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "storage" / "samples" / "handbook" / "travel-policy.pdf"

HEADER_TEXT = "Northwind Robotics — Travel Policy"
PAGE_W, PAGE_H = 612, 792  # US Letter, points
MARGIN_X = 72
BODY_RECT = pymupdf.Rect(MARGIN_X, 78, PAGE_W - MARGIN_X, PAGE_H - 64)
HEADER_RECT = pymupdf.Rect(MARGIN_X, 30, PAGE_W - MARGIN_X, 50)
FOOTER_RECT = pymupdf.Rect(MARGIN_X, PAGE_H - 44, PAGE_W - MARGIN_X, PAGE_H - 26)

CSS = """
* { font-family: sans-serif; }
body { font-size: 10.5px; line-height: 1.35; color: #1a1a1a; }
h1 { font-size: 22px; margin: 0 0 10px 0; color: #0b3d5c; }
h2 { font-size: 15px; margin: 12px 0 6px 0; color: #0b3d5c; }
h3 { font-size: 12px; margin: 10px 0 4px 0; }
p { margin: 0 0 7px 0; }
ul, ol { margin: 0 0 7px 0; }
li { margin: 0 0 2px 0; }
table { border-collapse: collapse; margin: 4px 0 8px 0; width: 100%; }
th, td { border: 1px solid #888; padding: 3px 5px; font-size: 10px; text-align: left; }
th { background-color: #e4edf3; }
.title { font-size: 34px; color: #0b3d5c; margin-top: 150px; }
.subtitle { font-size: 16px; color: #444; }
.small { font-size: 9px; color: #666; }
"""

# One Markdown string per physical page. A line starting with "!" is raw HTML (title page).
PAGES: list[str] = [
    # ---- page 1: title page ---------------------------------------------------------------
    """
!<p class="title"><b>Travel Policy</b></p>
!<p class="subtitle">Northwind Robotics, Inc.</p>
!<p class="subtitle">Version 3.2, effective 1 March 2025</p>

Policy owner: People Operations and Finance. Approved by Lena Hartmann, Chief Financial Officer.

This policy explains how Northwind Robotics employees book and pay for business travel. It
complements the Expenses page of the team handbook, which covers everyday expenses and
domestic meal per diems.

## Contents

1. Scope and booking (page 2)
2. Flights (page 3)
3. International hotels and per diem (page 4)
4. Ground transport (page 5)
5. International travel, insurance and emergencies (page 6)

!<p class="small">Questions about this policy: travel@northwind.example or the #ask-travel channel.</p>
""",
    # ---- page 2: scope and booking --------------------------------------------------------
    """
# 1. Scope and Booking

This policy applies to all employees, contractors and interns who travel on Northwind
business, whether to customer warehouses, conferences, offsites or partner sites. Travel
is a privilege we extend to get work done; choose the option that is safe, reasonable in
price and good for the business.

## 1.1 When a trip needs approval

- Every trip needs **manager approval before anything is booked**. Submit a trip request in Wayfare with the purpose, dates and an estimated cost.
- Trips with an estimated cost above **$5,000**, or any trip outside North America, also need approval from your director.
- Customer visits must be coordinated with the account owner in Sales, so that two teams do not show up on the same day.

## 1.2 Booking through Wayfare

All flights, hotels and rental cars are booked through **Wayfare**, our travel booking portal
at wayfare.northwind.example. Bookings made outside Wayfare are reimbursed only if they are
at least 10% cheaper than the best Wayfare fare for the same trip, with a screenshot as proof.

- Book flights at least **14 days in advance**. Fares booked later than that need a short reason in the trip request.
- Wayfare's 24-hour agent line is **+1-555-0177** for changes while you are on the road.
- Choose refundable fares only if the difference is less than $150; otherwise book a changeable economy fare.
- Personal days added to a business trip are fine, as long as the airfare does not increase by more than $100. You pay for the extra hotel nights.

## 1.3 Who pays

Wayfare bookings are billed centrally to your team's cost center, so they do not appear in
your Ledgerly claims. Everything else you pay on the trip (meals, taxis, incidentals) is
claimed in Ledgerly within 30 days of your return, like any other expense.

## 1.4 Travel and well-being

Nobody is expected to travel on a weekend without agreeing to it first. If a trip requires
weekend travel, you may take the equivalent time off in the following two weeks.
Employees who are pregnant, recovering from illness or have a disability can ask People
Operations for adjusted arrangements; these requests are always approved.
""",
    # ---- page 3: flights ------------------------------------------------------------------
    """
# 2. Flights

## 2.1 Booking class rules

The cabin class you may book depends on the scheduled flight time of the longest single
leg of the journey, not on the total travel time.

| Longest leg (scheduled) | Cabin you may book | Extra approval |
|---|---|---|
| Under 6 hours | Economy | None |
| 6 to 10 hours | Premium economy | None |
| Over 10 hours | Business class | VP approval in Wayfare |
| Any length | First class | Never reimbursed |

- An overnight flight (a "red-eye") of more than 5 hours entitles you to start work at
  noon the next day, whatever the cabin.
- Travelling together with a customer who flies business class does not change your cabin.
- Upgrades paid with your own miles or points are always fine.

## 2.2 Airlines and fares

- Choose the lowest logical fare: the cheapest non-stop or one-stop option within **two hours** of your preferred departure time.
- Prefer our partner airlines Pacific Crest Air and Atlas Airways, where we have negotiated fares; Wayfare shows them first.
- Basic economy fares that do not allow a carry-on bag are not recommended for trips with equipment.

## 2.3 Baggage and equipment

- One checked bag per flight is reimbursed. Additional bags are reimbursed only when you carry robot parts, demo kits or trade-show material.
- Robot batteries must never be checked in. Lithium batteries above **100 Wh** need airline approval in advance; ask the Logistics team at least 7 days before your flight.
- Demo units travel as cargo through Logistics, not as luggage.

## 2.4 Loyalty programs and changes

You keep the frequent-flyer miles and hotel points earned on business travel. Choosing a
more expensive flight or hotel only to earn points is not allowed.

If your plans change, change or cancel the booking in Wayfare as soon as you know. Unused
non-refundable tickets are stored as credit in Wayfare and must be used for your next trip.
""",
    # ---- page 4: hotels and international per diem ----------------------------------------
    """
# 3. International Hotels and Per Diem

Domestic (United States) hotel caps and meal per diems are set in the Expenses page of
the handbook. When you travel outside the United States, the rates below apply instead.
Cities are grouped into three tiers by cost of living.

## 3.1 Rates by city tier

| Tier | Example cities | Hotel cap per night | Meal per diem per day |
|---|---|---|---|
| Tier 1 | London, Tokyo, Zurich, Singapore | $380 | $120 |
| Tier 2 | Berlin, Seoul, Toronto, Amsterdam | $270 | $95 |
| Tier 3 | All other cities | $190 | $70 |

- Rates are in US dollars. Ledgerly converts your foreign-currency receipts at the card rate on the day of purchase.
- On the first and last day of a trip you receive **75%** of the daily meal per diem.
- If a meal is provided by a host or conference, deduct 20% of the per diem for breakfast, 30% for lunch and 50% for dinner.

## 3.2 Hotels

- Book hotels through Wayfare, which shows the cap for your destination. A rate above the cap needs manager approval before you book.
- Stays of **more than 14 nights** in one city should use a serviced apartment; Wayfare's long-stay desk arranges this.
- Choose hotels within 30 minutes of the customer site or office by public transport or taxi.
- Airbnb and similar private rentals are allowed only when they are cheaper than the hotel cap and have a 24-hour check-in contact.

## 3.3 Staying with friends

If you stay with friends or family instead of a hotel, you may claim a gift of up to
**$50 per night**, capped at $250 per trip, to thank your hosts. No receipt is required
for this gift, but name the hosts in the Ledgerly claim.

## 3.4 Tips and incidentals

Tips follow local custom and are covered by the per diem, except porterage for equipment,
which you may claim separately.
""",
    # ---- page 5: ground transport ---------------------------------------------------------
    """
# 4. Ground Transport

## 4.1 Rail

Take the train when the scheduled rail journey is **under 4 hours** and a comparable
flight exists. Rail is cheaper, lets you work on the way and produces less carbon.
Standard class is the default; first class is allowed on journeys over 2 hours if it
costs no more than 20% more than standard class.

## 4.2 Taxis and ride-share

- Use public transport, a taxi or the standard (not premium) ride-share option between airports, hotels and customer sites.
- Late at night, after **22:00**, always take a taxi or ride-share rather than walking or public transport. Safety comes first.
- Keep the receipts; ride-share receipts are forwarded to Ledgerly automatically if you link your work profile.

## 4.3 Rental cars

| Situation | Car class |
|---|---|
| One or two travellers | Compact or intermediate |
| Three or more travellers, or equipment | Full-size or minivan |
| Customer site without public transport | Intermediate |

- Book rental cars through Wayfare. The corporate rate already includes collision and liability insurance, so **decline the extra insurance** at the counter.
- Refuel the car before returning it; prepaid fuel and refuelling charges are not reimbursed.
- Electric cars are encouraged where charging is available along the route.

## 4.4 Personal cars

Using your own car for business trips is reimbursed at **$0.67 per mile** (or $0.42 per
kilometre outside the United States). The rate covers fuel, wear and insurance. Claim the
distance in Ledgerly with the start and end addresses; the commute between your home and
your usual office is never reimbursed.

## 4.5 Parking and tolls

Airport parking is reimbursed at the long-term lot rate for up to **10 days**. Tolls and
congestion charges are reimbursed with receipts. Parking and traffic fines are always your
own responsibility.
""",
    # ---- page 6: international travel, insurance, emergencies ----------------------------
    """
# 5. International Travel, Insurance and Emergencies

## 5.1 Passports and visas

- Your passport must be valid for at least **6 months** beyond your return date.
- Start visa applications at least **6 weeks** before departure. Northwind pays visa fees and uses the agency VisaPoint for business visas; ask People Operations for an invitation letter.

## 5.2 Security review and devices

- Trips to countries on the Security team's elevated-risk list must be registered with Security at least **21 days** before departure.
- For those countries, take a **clean loaner laptop** from IT instead of your own; IT prepares it within 5 business days. Do not take security keys for production systems.

## 5.3 Travel insurance

All business trips are covered by our travel insurance with **Harbor Assist**.

- Policy number: **NWR-TI-2025-0447**. The insurance card is in the Wayfare app and on the intranet.
- Covered: emergency medical treatment abroad, medical evacuation, trip cancellation for covered reasons and lost luggage up to $3,000.
- Personal days added to a business trip are covered for up to 7 days.

## 5.4 Emergency contacts

| Situation | Contact |
|---|---|
| Medical emergency abroad | Harbor Assist, +1-555-0188 (24/7) |
| Safety or security incident | Northwind travel emergency line, +1-555-0199 (24/7) |
| Lost passport or stolen wallet | Travel emergency line, then the nearest embassy |
| Flight cancelled or missed | Wayfare agent line, +1-555-0177 (24/7) |
| Lost laptop or security key | Security hotline, +1-555-0142 (24/7) |

If you are caught up in a natural disaster, strike or civil unrest, check in on the
**travel emergency line within 12 hours**, even if you are safe, so that we can account
for everyone.

## 5.5 Policy exceptions

Exceptions to this policy need written approval from the CFO before the trip. Expenses
that break the policy without an approved exception are not reimbursed.
""",
]

# Outline: (level, title, 1-based page). Kept next to PAGES so both change together.
TOC: list[list] = [
    [1, "Travel Policy", 1],
    [1, "1. Scope and Booking", 2],
    [2, "1.1 When a trip needs approval", 2],
    [2, "1.2 Booking through Wayfare", 2],
    [1, "2. Flights", 3],
    [2, "2.1 Booking class rules", 3],
    [2, "2.3 Baggage and equipment", 3],
    [1, "3. International Hotels and Per Diem", 4],
    [2, "3.1 Rates by city tier", 4],
    [1, "4. Ground Transport", 5],
    [2, "4.4 Personal cars", 5],
    [1, "5. International Travel, Insurance and Emergencies", 6],
    [2, "5.3 Travel insurance", 6],
    [2, "5.4 Emergency contacts", 6],
]


def _inline(text: str) -> str:
    """Escape HTML and render **bold** (the only inline markup the pages use)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text, quote=False))


def markdown_to_html(md: str) -> str:
    """Convert the small Markdown subset used in PAGES to HTML.

    Supported: `#`..`###` headings, paragraphs (wrapped lines are joined), `-` bullets
    (continuation lines indented), `1.` numbered lists, pipe tables, and `!`-prefixed raw
    HTML lines. A full Markdown library would be a new dependency for one script.
    """
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag: str | None = None
    table: list[list[str]] = []

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = None
        if table:
            head, *rows = [r for r in table if not all(re.fullmatch(r"-+", c) for c in r)]
            html_rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
            html_rows += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("<table>" + "".join(html_rows) + "</table>")
            table.clear()

    for raw in md.strip("\n").splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("!"):
            flush()
            out.append(stripped[1:])
        elif m := re.match(r"(#{1,3}) (.*)", stripped):
            flush()
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif stripped.startswith("|"):
            if para or items:
                flush()
            table.append([c.strip() for c in stripped.strip("|").split("|")])
        elif m := re.match(r"(-|\d+\.) (.*)", stripped):
            tag = "ul" if m.group(1) == "-" else "ol"
            if para or table or (list_tag and list_tag != tag):
                flush()
            list_tag = tag
            items.append(m.group(2))
        elif items and line.startswith(" "):
            items[-1] += " " + stripped  # continuation of the previous list item
        else:
            para.append(stripped)
    flush()
    return "\n".join(out)


def build(out_path: Path) -> Path:
    """Write the Travel Policy PDF to `out_path` and return the path."""
    doc = pymupdf.open()
    total = len(PAGES)
    for number, md in enumerate(PAGES, start=1):
        page = doc.new_page(width=PAGE_W, height=PAGE_H)
        # scale_low=1 forbids shrinking: if a page's text does not fit, fail loudly
        # instead of letting the layout change which page a fact is on.
        spare, scale = page.insert_htmlbox(BODY_RECT, markdown_to_html(md), css=CSS, scale_low=1)
        if spare < 0 or scale < 1:
            raise SystemExit(f"page {number}: text does not fit the page body; shorten it")
        # Running header and footer, on every page including the title page, so that the
        # ingestion code has to cope with repeated boilerplate lines.
        page.insert_htmlbox(HEADER_RECT, f'<p style="font-size:8.5px;color:#666">{HEADER_TEXT}</p>', css=CSS)
        page.draw_line((MARGIN_X, 52), (PAGE_W - MARGIN_X, 52), color=(0.7, 0.7, 0.7), width=0.5)
        page.insert_htmlbox(
            FOOTER_RECT,
            f'<p style="font-size:8.5px;color:#666;text-align:center">Page {number} of {total}</p>',
            css=CSS,
        )

    doc.set_toc(TOC)
    fixed_date = "D:20250301090000Z"  # fixed so rebuilding does not change the file
    doc.set_metadata(
        {
            "title": "Travel Policy",
            "author": "Northwind Robotics People Operations",
            "subject": "Business travel rules: booking, flights, hotels, per diem, ground transport, insurance",
            "creator": "bench/make_sample_pdf.py",
            "producer": "PyMuPDF",
            "creationDate": fixed_date,
            "modDate": fixed_date,
        }
    )
    doc.subset_fonts()  # embedded fonts are most of the size; keep only the used glyphs
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(out_path, garbage=4, deflate=True, no_new_id=True, reproducible=True)
    doc.close()
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output path (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    path = build(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {len(PAGES)} pages)")


if __name__ == "__main__":
    main()
