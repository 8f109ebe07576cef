#!/usr/bin/env python3
"""Generate the real-model datasets of `landscape` (deterministic; output is committed).

Real-world facts and skills a small pretrained English LM (SmolLM2-135M) partly knows, written by
the project itself (no dataset is downloaded), grouped like Li et al. 2024's categories:

- ``suites/*.jsonl`` multiple choice {"context", "choices", "answer"}, scored by log-likelihood:
    knowledge:     ``capitals`` (country → capital), ``animal_classes`` (animal → mammal/bird/...)
    reasoning:     ``arithmetic`` (one- and two-digit sums and differences after four worked
                   examples), ``number_patterns`` (continue a progression: by 1, 2, 3, 5, 10, or down)
    understanding: ``reading`` (a two-sentence story, a question about it), ``opposites`` (antonyms)
  each with ≥ 100 items and four choices (chance = 0.25).
- ``general.jsonl`` held-out general English ({"text"}): plain encyclopedic sentences, the default
  data of the forgetting predictors' "general loss".
- ``tasks/reverse/{train,eval}.jsonl`` a fine-tuning task from another distribution
  ({"prompt", "completion"}): write a list of words in reverse order.
- ``tasks/json/{train,eval}.jsonl`` a second task, unlike the first and unlike the suites: write a
  few "field value" pairs as a JSON object with its keys in alphabetical order (a format and a
  sorting rule; vocabulary of its own).

Run: ``python data/real/generate.py`` (rewrites the files next to this script; same bytes every time).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261125

CAPITALS = [
    ("Afghanistan", "Kabul"), ("Albania", "Tirana"), ("Algeria", "Algiers"), ("Argentina", "Buenos Aires"),
    ("Armenia", "Yerevan"), ("Australia", "Canberra"), ("Austria", "Vienna"), ("Azerbaijan", "Baku"),
    ("Bangladesh", "Dhaka"), ("Belarus", "Minsk"), ("Belgium", "Brussels"), ("Brazil", "Brasilia"), ("Bulgaria", "Sofia"), ("Cambodia", "Phnom Penh"), ("Cameroon", "Yaounde"),
    ("Canada", "Ottawa"), ("Chile", "Santiago"), ("China", "Beijing"), ("Colombia", "Bogota"),
    ("Costa Rica", "San Jose"), ("Croatia", "Zagreb"), ("Cuba", "Havana"), ("Cyprus", "Nicosia"),
    ("the Czech Republic", "Prague"), ("Denmark", "Copenhagen"), ("Ecuador", "Quito"), ("Egypt", "Cairo"),
    ("Estonia", "Tallinn"), ("Ethiopia", "Addis Ababa"), ("Finland", "Helsinki"), ("France", "Paris"),
    ("Georgia", "Tbilisi"), ("Germany", "Berlin"), ("Ghana", "Accra"), ("Greece", "Athens"),
    ("Guatemala", "Guatemala City"), ("Haiti", "Port-au-Prince"), ("Honduras", "Tegucigalpa"),
    ("Hungary", "Budapest"), ("Iceland", "Reykjavik"), ("India", "New Delhi"), ("Indonesia", "Jakarta"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Ireland", "Dublin"), ("Italy", "Rome"),
    ("Jamaica", "Kingston"), ("Japan", "Tokyo"), ("Jordan", "Amman"), ("Kazakhstan", "Astana"),
    ("Kenya", "Nairobi"), ("Kuwait", "Kuwait City"), ("Kyrgyzstan", "Bishkek"), ("Laos", "Vientiane"),
    ("Latvia", "Riga"), ("Lebanon", "Beirut"), ("Libya", "Tripoli"), ("Lithuania", "Vilnius"),
    ("Luxembourg", "Luxembourg"), ("Madagascar", "Antananarivo"), ("Malaysia", "Kuala Lumpur"),
    ("Mali", "Bamako"), ("Malta", "Valletta"), ("Mexico", "Mexico City"), ("Moldova", "Chisinau"),
    ("Mongolia", "Ulaanbaatar"), ("Morocco", "Rabat"), ("Mozambique", "Maputo"), ("Nepal", "Kathmandu"),
    ("the Netherlands", "Amsterdam"), ("New Zealand", "Wellington"), ("Nicaragua", "Managua"),
    ("Niger", "Niamey"), ("Nigeria", "Abuja"), ("North Korea", "Pyongyang"), ("Norway", "Oslo"),
    ("Oman", "Muscat"), ("Pakistan", "Islamabad"), ("Panama", "Panama City"), ("Paraguay", "Asuncion"),
    ("Peru", "Lima"), ("the Philippines", "Manila"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"),
    ("Qatar", "Doha"), ("Romania", "Bucharest"), ("Russia", "Moscow"), ("Rwanda", "Kigali"),
    ("Saudi Arabia", "Riyadh"), ("Senegal", "Dakar"), ("Serbia", "Belgrade"), ("Singapore", "Singapore"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Somalia", "Mogadishu"),
    ("South Korea", "Seoul"), ("Spain", "Madrid"), ("Sudan", "Khartoum"), ("Sweden", "Stockholm"), ("Switzerland", "Bern"), ("Syria", "Damascus"),
    ("Taiwan", "Taipei"), ("Tajikistan", "Dushanbe"), ("Tanzania", "Dodoma"), ("Thailand", "Bangkok"),
    ("Tunisia", "Tunis"), ("Turkey", "Ankara"), ("Uganda", "Kampala"), ("Ukraine", "Kyiv"),
    ("the United Kingdom", "London"), ("the United States", "Washington"), ("Uruguay", "Montevideo"),
    ("Uzbekistan", "Tashkent"), ("Venezuela", "Caracas"), ("Vietnam", "Hanoi"), ("Yemen", "Sanaa"),
    ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"),
]

ANIMALS = {
    "mammal": ["dog", "cat", "horse", "cow", "pig", "sheep", "goat", "lion", "tiger", "elephant", "whale",
               "dolphin", "bat", "mouse", "rabbit", "bear", "wolf", "fox", "deer", "monkey", "giraffe", "zebra",
               "kangaroo", "camel", "squirrel", "otter", "seal", "hippopotamus", "rhinoceros", "gorilla", "hamster", "beaver",
               "leopard", "cheetah", "panda", "koala"],
    "bird": ["eagle", "sparrow", "owl", "penguin", "parrot", "duck", "chicken", "swan", "crow", "pigeon",
             "ostrich", "flamingo", "robin", "hawk", "goose", "peacock", "woodpecker", "pelican", "turkey",
             "seagull"],
    "fish": ["salmon", "trout", "tuna", "shark", "cod", "goldfish", "carp", "herring", "sardine", "catfish",
             "mackerel", "swordfish", "eel", "pike", "anchovy"],
    "reptile": ["snake", "lizard", "crocodile", "alligator", "turtle", "tortoise", "iguana", "gecko",
                "chameleon", "cobra", "python", "komodo dragon"],
    "insect": ["ant", "bee", "butterfly", "mosquito", "fly", "beetle", "wasp", "grasshopper", "ladybug",
               "dragonfly", "moth", "cricket", "termite", "flea", "cockroach"],
    "amphibian": ["frog", "toad", "salamander", "newt"],
}

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
    ("light", "dark"), ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("early", "late"),
    ("full", "empty"), ("hard", "soft"), ("high", "low"), ("long", "short"), ("loud", "quiet"),
    ("wet", "dry"), ("thick", "thin"), ("heavy", "light"), ("clean", "dirty"), ("true", "false"),
    ("good", "bad"), ("left", "right"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
    ("give", "take"), ("begin", "end"), ("inside", "outside"), ("above", "below"), ("before", "after"),
    ("day", "night"), ("north", "south"), ("east", "west"), ("summer", "winter"), ("love", "hate"),
    ("friend", "enemy"), ("question", "answer"), ("arrive", "leave"), ("remember", "forget"),
    ("accept", "refuse"), ("increase", "decrease"), ("maximum", "minimum"), ("ancient", "modern"),
    ("cheap", "expensive"), ("safe", "dangerous"), ("wide", "narrow"), ("deep", "shallow"),
    ("sweet", "sour"), ("brave", "cowardly"), ("polite", "rude"), ("tall", "short"), ("near", "far"),
    ("first", "last"), ("always", "never"), ("everything", "nothing"), ("victory", "defeat"),
    ("beginning", "ending"), ("entrance", "exit"), ("husband", "wife"), ("king", "queen"),
    ("boy", "girl"), ("brother", "sister"), ("father", "mother"), ("son", "daughter"), ("man", "woman"),
    ("laugh", "cry"), ("sink", "float"), ("attack", "defend"), ("agree", "disagree"), ("possible", "impossible"),
    ("visible", "invisible"), ("legal", "illegal"), ("natural", "artificial"), ("public", "private"),
    ("simple", "complex"), ("smooth", "rough"), ("tight", "loose"), ("asleep", "awake"), ("alive", "dead"),
    ("healthy", "sick"), ("guilty", "innocent"), ("wild", "tame"), ("positive", "negative"),
    ("major", "minor"), ("import", "export"), ("inner", "outer"), ("junior", "senior"), ("odd", "even"),
    ("raise", "lower"), ("sharp", "dull"), ("sunrise", "sunset"), ("freeze", "melt"),
    ("dark", "bright"), ("noisy", "silent"), ("future", "past"), ("borrow", "lend"), ("catch", "throw"),
    ("teacher", "student"), ("morning", "evening"),
]

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Julia", "Kevin", "Laura", "Mark",
         "Nina", "Oscar", "Paula", "Sam"]
THINGS = ["ball", "kite", "bike", "hat", "book", "car", "cup", "box", "coat", "lamp"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]
PLACES = ["garden", "kitchen", "library", "park", "school", "beach", "station", "market"]

GENERAL = [
    "The sun rises in the east and sets in the west.",
    "Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.",
    "The Earth travels around the Sun once every year, and the Moon travels around the Earth about once a month.",
    "Plants use sunlight, water and carbon dioxide to make their own food, a process called photosynthesis.",
    "The human heart pumps blood through the body, carrying oxygen to every organ.",
    "Most birds can fly, but some, such as penguins and ostriches, cannot.",
    "A week has seven days, and a year has twelve months.",
    "Rivers carry fresh water from the mountains down to the sea.",
    "Libraries lend books to the people who live in the town, and most of them are free to join.",
    "In winter the days are short and the nights are long; in summer it is the other way round.",
    "Bread is made from flour, water, salt and yeast, which makes the dough rise.",
    "The Pacific Ocean is the largest and deepest ocean on Earth.",
    "Doctors and nurses work in hospitals to care for people who are ill or injured.",
    "Trains and buses carry many passengers at once, which saves fuel compared with cars.",
    "Bees collect nectar from flowers and turn it into honey inside the hive.",
    "Children usually start school when they are five or six years old.",
    "Mountains are often covered in snow because the air gets colder the higher you climb.",
    "A thermometer measures temperature, and a clock measures time.",
    "Many people drink coffee or tea in the morning to help them wake up.",
    "The Great Wall of China was built over many centuries to protect the northern borders of the country.",
    "Volcanoes form where molten rock from deep inside the Earth rises to the surface.",
    "Farmers grow wheat, rice and corn, which feed most of the people in the world.",
    "Electric lights replaced candles and oil lamps in most homes during the twentieth century.",
    "A dictionary lists the words of a language in alphabetical order and explains what they mean.",
    "Whales are the largest animals on Earth, and although they live in the sea, they breathe air.",
    "The Amazon rainforest is home to millions of kinds of plants, insects and animals.",
    "When it rains and the sun shines at the same time, a rainbow may appear in the sky.",
    "People have used money for thousands of years to buy and sell goods.",
    "The piano has black and white keys, and it can play both low and high notes.",
    "Football is played by two teams of eleven players who try to kick the ball into the other team's goal.",
    "Leaves change colour in autumn and fall from the trees before winter.",
    "The first people to walk on the Moon arrived there in 1969.",
    "Salt water is heavier than fresh water, so it is easier to float in the sea than in a lake.",
    "A map shows where places are and how to travel from one place to another.",
    "Cats sleep for many hours each day and are most active at dawn and dusk.",
    "Recycling paper, glass and metal reduces the amount of rubbish that goes to landfill.",
    "The brain controls thinking, memory and movement, and it uses a large share of the body's energy.",
    "Ships use lighthouses to find their way safely along dangerous coasts at night.",
    "Cheese is made from milk, and there are hundreds of different kinds around the world.",
    "Earthquakes happen when large pieces of the Earth's crust suddenly move against each other.",
    "The alphabet used to write English has twenty-six letters.",
    "Apples, oranges and bananas are among the most popular fruits in the world.",
    "Snow is made of tiny ice crystals, and no two snowflakes are exactly alike.",
    "Museums keep paintings, sculptures and old objects so that people can learn about the past.",
    "A healthy diet includes vegetables, fruit, grains and enough water every day.",
    "Telephones let people talk to each other across long distances.",
    "The desert is very hot during the day but can become cold at night.",
    "Teachers help students learn to read, write and solve problems.",
]

WORDS = ["apple", "river", "stone", "cloud", "table", "green", "music", "paper", "horse", "light", "window",
         "garden", "silver", "orange", "winter", "pencil", "bridge", "forest", "candle", "rocket", "yellow",
         "button", "mirror", "basket", "jacket", "planet", "circle", "butter", "ladder", "pocket"]


def _mc(context: str, answer: str, wrong: list[str], rng: random.Random) -> dict:
    choices = [answer] + wrong
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "answer": choices.index(answer)}


def capitals(rng):
    cities = [c for _, c in CAPITALS]
    out = []
    for country, city in CAPITALS:
        wrong = rng.sample([c for c in cities if c != city], 3)
        out.append(_mc(f"The capital of {country} is", city, wrong, rng))
    return out


def animal_classes(rng):
    out = []
    classes = list(ANIMALS)
    for cls, animals in ANIMALS.items():
        for a in animals:
            article = "an" if a[0] in "aeiou" else "a"
            wrong = rng.sample([c for c in classes if c != cls], 3)
            out.append(_mc(f"Biologists classify {article} {a} as {'an' if cls[0] in 'aeiou' else 'a'}", cls,
                           wrong, rng))
    return out


def _numbers_near(x: int, rng, k: int = 3) -> list[int]:
    pool = sorted({x + d for d in (-10, -2, -1, 1, 2, 10)} - {x})
    return rng.sample([p for p in pool if p >= 0], k)


ARITHMETIC_SHOTS = "1 + 1 = 2\n3 + 2 = 5\n9 - 4 = 5\n6 + 3 = 9\n"


def arithmetic(rng):
    """Sums and differences after four worked examples (a 135M model needs the format shown)."""
    out = []
    for i in range(120):
        a, b = (rng.randint(1, 9), rng.randint(1, 9)) if i < 60 else (rng.randint(10, 49), rng.randint(10, 49))
        if i % 2 == 0:
            q, ans = f"{a} + {b} =", a + b
        else:
            a, b = max(a, b), min(a, b)
            q, ans = f"{a} - {b} =", a - b
        out.append(_mc(ARITHMETIC_SHOTS + q, str(ans), [str(n) for n in _numbers_near(ans, rng)], rng))
    return out


def number_patterns(rng):
    """Continue an arithmetic progression: counting on, by twos, threes, fives, tens, or down."""
    out = []
    for _ in range(120):
        step = rng.choice([1, 2, 3, 5, 10, -1, -2, -10])
        start = rng.randint(1, 20) * (abs(step) if abs(step) >= 5 else 1) + (60 if step < 0 else 0)
        xs = [start + i * step for i in range(4)]
        ans = start + 4 * step
        out.append(_mc(", ".join(map(str, xs)) + ",", str(ans), [str(n) for n in _numbers_near(ans, rng)], rng))
    return out


def reading(rng):
    out = []
    for _ in range(120):
        a, b = rng.sample(NAMES, 2)
        ta, tb = rng.sample(THINGS, 2)
        ca, cb = rng.sample(COLORS, 2)
        place = rng.choice(PLACES)
        story = f"{a} has a {ca} {ta} and {b} has a {cb} {tb}. They played in the {place}."
        kind = rng.randrange(3)
        if kind == 0:
            out.append(_mc(f"{story} The color of {a}'s {ta} is", ca, rng.sample([c for c in COLORS if c != ca], 3),
                           rng))
        elif kind == 1:
            out.append(_mc(f"{story} The {tb} belongs to", b, rng.sample([n for n in NAMES if n != b], 3), rng))
        else:
            out.append(_mc(f"{story} They played in the", place, rng.sample([p for p in PLACES if p != place], 3),
                           rng))
    return out


def opposites(rng):
    words = sorted({w for pair in OPPOSITES for w in pair})
    valid: dict[str, set] = {}
    for a, b in OPPOSITES:  # "light" is the opposite of "dark" and of "heavy": neither may be a distractor
        valid.setdefault(a, {a}).add(b)
        valid.setdefault(b, {b}).add(a)
    assert len({a for a, _ in OPPOSITES}) == len(OPPOSITES), "one item per prompt word"
    out = []
    for a, b in OPPOSITES:
        wrong = rng.sample([w for w in words if w not in valid[a]], 3)
        out.append(_mc(f"The opposite of \"{a}\" is \"", b, wrong, rng))
    return out


def reverse_task(rng, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        ws = rng.sample(WORDS, rng.randint(3, 5))
        out.append({"prompt": f"Reverse the order of these words: {' '.join(ws)}\nReversed:",
                    "completion": " " + " ".join(reversed(ws))})
    return out


JSON_FIELDS = {"fruit": ["pear", "plum", "mango", "lemon", "cherry", "peach", "grape", "melon"],
               "tool": ["hammer", "wrench", "saw", "drill", "chisel", "shovel", "rake", "ladle"],
               "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
               "size": ["tiny", "small", "medium", "large", "huge"],
               "shape": ["circle", "square", "triangle", "oval", "star", "hexagon"],
               "metal": ["iron", "copper", "silver", "gold", "tin", "zinc"]}


def json_task(rng, n: int, exclude: tuple = ()) -> list[dict]:
    """``n`` distinct items whose prompts are not in ``exclude`` (held-out items are new)."""
    out, seen = [], {r["prompt"] for r in exclude}
    while len(out) < n:
        keys = rng.sample(sorted(JSON_FIELDS), rng.randint(2, 3))
        pairs = [(k, rng.choice(JSON_FIELDS[k])) for k in keys]
        prompt = "As JSON, keys sorted: " + "; ".join(f"{k} {v}" for k, v in pairs)
        if prompt + "\nJSON:" in seen:
            continue
        seen.add(prompt + "\nJSON:")
        out.append({"prompt": prompt + "\nJSON:", "completion": " " + json.dumps(dict(sorted(pairs)))})
    return out


def write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(SEED)
    suites = {"capitals": capitals, "animal_classes": animal_classes, "arithmetic": arithmetic,
              "number_patterns": number_patterns, "reading": reading, "opposites": opposites}
    for name, make in suites.items():
        write(HERE / "suites" / f"{name}.jsonl", make(rng))
    categories = {"knowledge": ["capitals", "animal_classes"], "reasoning": ["arithmetic", "number_patterns"],
                  "understanding": ["reading", "opposites"]}
    (HERE / "suites" / "categories.json").write_text(json.dumps(categories, indent=2) + "\n")
    write(HERE / "general.jsonl", [{"text": t} for t in GENERAL])
    write(HERE / "tasks" / "reverse" / "train.jsonl", reverse_task(rng, 400))
    write(HERE / "tasks" / "reverse" / "eval.jsonl", reverse_task(rng, 60))
    train = json_task(rng, 400)
    write(HERE / "tasks" / "json" / "train.jsonl", train)
    write(HERE / "tasks" / "json" / "eval.jsonl", json_task(rng, 60, exclude=train))


if __name__ == "__main__":
    main()
