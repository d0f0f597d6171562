"""Regenerates benign_inputs.txt: realistic benign user inputs, one per line (deterministic).

Run: python tests/data/guards/make_benign.py > tests/data/guards/benign_inputs.txt
Everything here was written for Garrison; combinations are fixed by a seeded RNG.
"""

from __future__ import annotations

import json
import random

rng = random.Random(7)

SURNAMES = [
    "O'Brien", "O'Neil", "D'Angelo", "D'Arcy", "McDonald", "O'Connor", "L'Estrange",
    "N'Diaye", "Dell'Acqua", "D'Souza", "O'Malley", "Smith-Jones", "van der Berg", "St. John",
    "Al-Hassan", "Ngũgĩ", "Müller", "García Márquez", "O'Hara", "Da'Vinci", "Mc'Kay",
]
FIRST = ["Mary", "Sean", "Aoife", "Luca", "Chloé", "Ahmed", "Priya", "Zoë", "Bob", "Li",
         "José", "Ana-María", "Jean-Luc", "Siobhán", "Ngozi", "Dmitri"]
STREETS = ["Main St.", "O'Connell Street", "Rue de l'Église", "King's Road", "5th Ave",
           "Elm St, Apt #4", "Baker Street 221b", "Via dell'Orso", "Queen's Gate",
           "Union Square", "Order Lane", "Select Road", "Drop Hill Rd", "Table Mountain Dr."]
CITIES = ["Dublin", "New York, NY 10001", "L'Aquila", "St. John's, NL", "Coeur d'Alene, ID",
          "Paris 75004", "Berlin", "Salt Lake City, UT", "Ho Chi Minh City", "São Paulo - SP"]
PROSE = [
    "I'm not sure -- maybe we should wait until Monday.",
    "She said \"it's fine\" - but it wasn't.",
    "Don't forget: the meeting is at 3 o'clock; bring the 'final' draft.",
    "We'd like to order 2 tables and 4 chairs, please.",
    "Select the size you want from the drop-down menu.",
    "Union members voted 52-48 to accept the offer.",
    "Please drop off the package at the front desk -- thanks!",
    "The 'Delete' button is greyed out; how do I remove my account?",
    "Is it 'color' or 'colour'? Either is fine.",
    "It's 5 o'clock somewhere, isn't it?",
    "Rock 'n' roll will never die.",
    "1 or 2 spoons of sugar -- no more.",
    "Group by age: under 18, 18-65 and 65+.",
    "Order by Friday to get it before the weekend.",
    "He wrote: 'Where is everyone?' and left.",
    "We can't update the address; the form says \"invalid\".",
    "My cat's name is \"Sir Pounce-a-lot\".",
    "The show's tagline was 'Love, lies & lemonade'.",
    "Grades: A = 90-100, B = 80-89.",
    "Temperature today: -5 to +3 degrees.",
    "Can I insert a photo into my review?",
    "Having trouble logging in since yesterday's update.",
    "You're welcome -- glad it helped!",
    "To be or not to be, that is the question.",
    "Buy one, get one free (while stocks last).",
    "Is 'null' a valid middle name? Asking for a friend.",
    "The sleep study said 7-9 hours is best.",
    "Between you and me, the sequel was better.",
    "Where's the nearest pharmacy that's open late?",
    "I'll be there at 10:30 -- or 11 at the latest.",
    "Please execute the plan as discussed; call me if anything changes.",
    "Set the oven to 180 °C and bake for 25-30 minutes.",
    "Note: items marked '*' are required.",
    "Love it!!! 5/5 would buy again :)",
    "Q: what's 2+2? A: 4, obviously.",
    "The label reads \"Made in Italy\" -- but the box says China.",
    "If you're reading this, it's too late.",
    "We're open Mon-Fri 9-5; closed on holidays.",
    "Use code SAVE10 at checkout (expires 12/31).",
    "Can you create a new folder for the 2024 reports?",
    "Declare your items at customs if they're over $800.",
    "All's well that ends well.",
    "I want to cancel my order #12345, please.",
    "Tables, chairs & sofas -- 20% off this weekend only.",
    "My password reset e-mail never arrived; can you resend it?",
    "Why does the 'Save' button say \"error 500\"?",
    "The kids' menu has chicken, pasta and fries.",
    "We need 3 x 5 index cards (not 4 x 6).",
    "Room 101 -- the one at the end of the hall.",
    "She's from Coeur d'Alene; he's from St. John's.",
]
SEARCH = [
    "drop leaf table", "union jack cushion", "select comfort mattress", "order of the phoenix",
    "group by example", "insert molding", "delete facebook account", "update iphone",
    "sleep mask", "benchmark gpu 2024", "where is my order", "having a baby checklist",
    "between the lines book", "create account", "table runner 14 x 72", "null pointer exception",
    "1/2\" pvc elbow", "3/4 inch plywood", "men's shoes size 10", "women's running shoes",
    "kids' bikes", "o'reilly auto parts", "levi's 501", "macy's coupon", "trader joe's hours",
    "rock 'n' roll t-shirt", "5' x 8' rug", "6'2\" tall jeans", "2x4 lumber price",
    "c++ tutorial", "c# vs java", "f# pipes", "node.js -- version", "what is 1+1",
    "python list comprehension", "sql injection prevention", "how to use select in sql",
    "union station parking", "execute order 66", "drop shipping business", "declare bankruptcy",
    "truncate text css", "exec summary template", "shutdown pc shortcut", "wait for delay pedal",
    "char broil grill", "ascii art cat", "concat strings python", "version history google docs",
    "user agreement template", "database design course", "count of monte cristo",
    "sleep 5 hours meaning", "benchmark definition", "load file from disk", "or tools",
    "and or not gates", "xor gate truth table", "if else flowchart", "case when syntax",
    "like new condition", "is it going to rain", "in stock near me", "not found 404",
    "limit switch wiring", "having fun quotes", "procedure for passport renewal",
    "into the wild book", "from russia with love", "select all shortcut mac",
]
CODE = [
    "for (let i = 0; i < n; i++) { sum += a[i]; }",
    "if x == 1 or y == 2: print('ok')",
    "def f(a, b=None): return a or b",
    "SELECT is my favourite keyword -- said nobody",
    "git commit -m \"fix: don't crash on empty input\"",
    "ls -la /home/user | grep '.txt'",
    "const f = (x) => x * 2; // double it",
    "<a href=\"/search?q=shoes&page=2\">next</a>",
    "printf(\"%d items\\n\", count);",
    "x = a if a > 0 else -a  # abs",
    "while (true) { if (done) break; }",
    "echo $HOME && cd -",
    "std::vector<int> v{1, 2, 3};",
    "return (a && b) || c;",
    "user.name = 'O''Brien'",
    "my_list[-1]  # last item",
    "#include <stdio.h>",
    "/* TODO: refactor this */ int main() { return 0; }",
    "x := 5; y := x + 1",
    "$price = $qty * 1.2; // incl. VAT",
    "SELECT tab, press Enter",
    "body { margin: 0; padding: 0 1em; }",
    "a[href^='http'] { color: red; }",
    "rm -- -filename",
    "npm install --save-dev eslint",
    "pip install 'requests>=2.0'",
    "docker run -p 8080:80 nginx",
    "sum(x for x in range(10) if x % 2)",
    "e = mc^2",
    "a = b -- c",
    "f(x) = 3x^2 - 2x + 1",
]
EMAILS = ["mary.o'brien@example.com", "sean+news@example.org", "o'neil@example.ie",
          "j.doe@mail.example.co.uk", "first.last-1@example.net"]


def jsons() -> list[str]:
    out = []
    for k in range(80):
        doc = {
            "name": f"{rng.choice(FIRST)} {rng.choice(SURNAMES)}",
            "address": {"street": rng.choice(STREETS), "city": rng.choice(CITIES)},
            "note": rng.choice(PROSE),
            "tags": rng.sample(["sale", "new", "drop", "union", "select", "vip", "or"], 2),
            "qty": rng.randint(1, 9),
            "id": k,
        }
        out.append(json.dumps(doc, ensure_ascii=False))
    return out


def main() -> None:
    lines: list[str] = []
    for s in SURNAMES:
        for f in rng.sample(FIRST, 6):
            lines.append(f"{f} {s}")
        lines.append(s)
        lines.append(f"{s}, {rng.choice(FIRST)}")
    for _ in range(260):
        lines.append(f"{rng.randint(1, 999)} {rng.choice(STREETS)}, {rng.choice(CITIES)}")
    lines += PROSE
    for p in PROSE:
        lines.append(f"{rng.choice(FIRST)} {rng.choice(SURNAMES)} wrote: {p}")
    lines += SEARCH
    for s in SEARCH:
        lines.append(f"{s} {rng.choice(['cheap', 'best', 'review', 'near me', '2024', 'sale'])}")
        lines.append(f"\"{s}\"")
    lines += CODE
    lines += EMAILS
    lines += jsons()
    for _ in range(60):
        lines.append(f"+1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-"
                     f"{rng.randint(1000, 9999)}")
        lines.append(f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/"
                     f"{rng.randint(1950, 2030)} - {rng.randint(0, 23)}:{rng.randint(0, 59):02d}")
    for _ in range(60):
        lines.append(f"{rng.choice(FIRST)}'s {rng.choice(SEARCH)}")
    for _ in range(60):
        lines.append(f"{rng.choice(FIRST)} {rng.choice(SURNAMES)} <{rng.choice(EMAILS)}>")
    seen = set()
    for line in lines:
        line = line.replace("\n", " ")
        if line not in seen:
            seen.add(line)
            print(line)


if __name__ == "__main__":
    main()
