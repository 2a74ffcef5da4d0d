"""Word lists behind the synthetic families: small on purpose, so a tiny LM can learn them.

Everything is plain ASCII and held in tuples (never sets), so iteration order, and with it every
generated file, is the same on every run.
"""

from __future__ import annotations

NAMES = ("Maria", "Sam", "Aisha", "Tom", "Lena", "Omar", "Priya", "Jack", "Mei", "Carlos",
         "Nora", "Ben", "Yuki", "Leo", "Sara", "Ravi", "Emma", "Kofi", "Ana", "Max")

ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "balloons",
         "oranges", "stamps", "shells", "coins", "eggs", "cupcakes", "toy cars", "flowers")

# (country, capital, a city people often confuse with the capital or None)
CAPITALS = (
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Portugal", "Lisbon", "Porto"),
    ("the United Kingdom", "London", "Manchester"), ("Ireland", "Dublin", "Cork"),
    ("Belgium", "Brussels", "Antwerp"), ("Switzerland", "Bern", "Zurich"),
    ("Austria", "Vienna", "Salzburg"), ("Poland", "Warsaw", "Krakow"),
    ("the Czech Republic", "Prague", "Brno"), ("Hungary", "Budapest", None),
    ("Greece", "Athens", "Thessaloniki"), ("Sweden", "Stockholm", "Gothenburg"),
    ("Norway", "Oslo", "Bergen"), ("Denmark", "Copenhagen", "Aarhus"), ("Finland", "Helsinki", None),
    ("Iceland", "Reykjavik", None), ("Russia", "Moscow", "Saint Petersburg"), ("Ukraine", "Kyiv", "Odesa"),
    ("Turkey", "Ankara", "Istanbul"), ("Egypt", "Cairo", "Alexandria"), ("Morocco", "Rabat", "Casablanca"),
    ("Nigeria", "Abuja", "Lagos"), ("Kenya", "Nairobi", "Mombasa"), ("Ethiopia", "Addis Ababa", None),
    ("Ghana", "Accra", "Kumasi"), ("Senegal", "Dakar", None), ("Tanzania", "Dodoma", "Dar es Salaam"),
    ("Algeria", "Algiers", "Oran"), ("Tunisia", "Tunis", None), ("China", "Beijing", "Shanghai"),
    ("Japan", "Tokyo", "Osaka"), ("South Korea", "Seoul", "Busan"), ("India", "New Delhi", "Mumbai"),
    ("Pakistan", "Islamabad", "Karachi"), ("Bangladesh", "Dhaka", "Chittagong"),
    ("Thailand", "Bangkok", None), ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Indonesia", "Jakarta", "Surabaya"), ("the Philippines", "Manila", "Cebu"),
    ("Malaysia", "Kuala Lumpur", None), ("Iran", "Tehran", "Isfahan"), ("Iraq", "Baghdad", "Basra"),
    ("Saudi Arabia", "Riyadh", "Jeddah"), ("Australia", "Canberra", "Sydney"),
    ("New Zealand", "Wellington", "Auckland"), ("Canada", "Ottawa", "Toronto"),
    ("Mexico", "Mexico City", "Guadalajara"), ("Brazil", "Brasilia", "Rio de Janeiro"),
    ("Argentina", "Buenos Aires", "Cordoba"), ("Chile", "Santiago", "Valparaiso"), ("Peru", "Lima", "Cusco"),
    ("Colombia", "Bogota", "Medellin"), ("Venezuela", "Caracas", None), ("Cuba", "Havana", None),
    ("Nepal", "Kathmandu", None), ("Mongolia", "Ulaanbaatar", None), ("Uruguay", "Montevideo", None),
    ("Ecuador", "Quito", "Guayaquil"), ("Romania", "Bucharest", None), ("Bulgaria", "Sofia", None),
    ("Serbia", "Belgrade", None), ("Croatia", "Zagreb", "Split"),
)

# (word, antonym, near-synonym of the word: the plausible wrong answer)
ANTONYMS = (
    ("hot", "cold", "warm"), ("big", "small", "large"), ("happy", "sad", "glad"), ("fast", "slow", "quick"),
    ("early", "late", "soon"), ("hard", "soft", "firm"), ("rich", "poor", "wealthy"),
    ("strong", "weak", "powerful"), ("young", "old", "youthful"), ("clean", "dirty", "tidy"),
    ("loud", "quiet", "noisy"), ("wet", "dry", "damp"), ("begin", "end", "start"),
    ("buy", "sell", "purchase"), ("win", "lose", "succeed"), ("push", "pull", "press"),
    ("love", "hate", "adore"), ("give", "take", "offer"), ("true", "false", "correct"),
    ("good", "bad", "fine"), ("easy", "difficult", "simple"), ("thick", "thin", "dense"),
    ("long", "short", "lengthy"), ("high", "low", "tall"), ("near", "far", "close"),
    ("brave", "cowardly", "bold"), ("cheap", "expensive", "inexpensive"), ("safe", "dangerous", "secure"),
    ("friend", "enemy", "pal"), ("arrive", "leave", "reach"), ("remember", "forget", "recall"),
    ("accept", "refuse", "agree"), ("increase", "decrease", "grow"), ("inside", "outside", "within"),
    ("laugh", "cry", "giggle"), ("question", "answer", "query"), ("sharp", "dull", "pointed"),
    ("smooth", "rough", "sleek"), ("sweet", "sour", "sugary"), ("polite", "rude", "courteous"),
    ("awake", "asleep", "alert"), ("lend", "borrow", "loan"), ("ancient", "modern", "old"),
    ("generous", "selfish", "kind"), ("calm", "nervous", "peaceful"), ("victory", "defeat", "triumph"),
    ("ascend", "descend", "climb"), ("entrance", "exit", "doorway"), ("visible", "invisible", "seen"),
    ("always", "never", "forever"), ("top", "bottom", "peak"), ("first", "last", "earliest"),
    ("fresh", "stale", "new"), ("wide", "narrow", "broad"), ("tight", "loose", "snug"),
    ("wild", "tame", "untamed"), ("proud", "humble", "pleased"), ("heavy", "light", "weighty"),
    ("bright", "dim", "shiny"), ("full", "empty", "packed"),
)

WORDS = ("garden", "window", "purple", "rabbit", "planet", "silver", "banana", "orange", "monkey",
         "pencil", "bottle", "candle", "dragon", "forest", "guitar", "island", "jacket", "kitten",
         "ladder", "market", "napkin", "pepper", "rocket", "tomato", "turtle", "violin", "wallet",
         "yellow", "zebra", "apple", "bread", "chair", "cloud", "dance", "eagle", "flame", "grape",
         "house", "juice", "lemon", "mango", "night", "ocean", "piano", "queen", "river", "snake",
         "tiger", "water", "strawberry", "balloon", "butter", "coffee", "letter", "mirror", "pillow",
         "summer", "teacher", "bubble", "puzzle", "cherry", "carrot", "parrot", "blossom", "banner",
         "cookie", "little", "kettle", "giraffe", "elephant")

# Sentences for word counting are built from these four slots.
SUBJECTS = ("My sister", "The old man", "A small dog", "Our teacher", "The children", "Maria",
            "Tom", "The farmer", "My best friend", "The cat")
VERBS = ("found", "painted", "washed", "carried", "liked", "lost", "bought", "cleaned", "opened", "fixed")
OBJECTS = ("the red ball", "a small box", "the old car", "three green apples", "the front door",
           "a heavy bag", "the broken chair", "two new books", "the big window", "a paper kite")
TAILS = ("", "in the park", "after school", "every morning", "near the river", "on Sunday",
         "before dinner", "at the market", "last week", "with great care")

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (("January", 31), ("February", 28), ("March", 31), ("April", 30), ("May", 31), ("June", 30),
          ("July", 31), ("August", 31), ("September", 30), ("October", 31), ("November", 30),
          ("December", 31))

# Sentiment reviews: (domain, products, aspects, {label: closing sentences}).
REVIEW_DOMAINS = (
    ("restaurant", ("restaurant", "cafe", "pizza place", "bakery"),
     ("food", "service", "staff", "soup", "dessert", "coffee", "pasta", "music"),
     {"positive": ("I would come back again.", "Highly recommended!", "We will be back soon."),
      "negative": ("I would not come back.", "Not recommended.", "We will not be back.")}),
    ("product", ("phone", "laptop", "blender", "jacket", "book", "movie", "hotel", "headphones"),
     ("battery", "screen", "price", "delivery", "sound", "ending", "room", "quality"),
     {"positive": ("I will buy it again.", "Worth every penny.", "Highly recommended!"),
      "negative": ("I want my money back.", "What a waste of money.", "Not recommended.")}),
)
# Adjectives that fit any aspect, so no review praises "friendly pasta".
POSITIVE = ("excellent", "amazing", "wonderful", "great", "fantastic", "perfect", "lovely", "superb",
            "outstanding", "brilliant")
NEGATIVE = ("terrible", "awful", "disappointing", "poor", "horrible", "dreadful", "bad", "mediocre",
            "lousy", "appalling")
# (concept, short correct explanation, a plausible misconception in the same words). No digits.
CONCEPTS = (
    ("photosynthesis",
     "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.",
     "Photosynthesis is the process animals use to turn food and oxygen into sugar and carbon dioxide."),
    ("gravity",
     "Gravity is the force that pulls objects toward each other, which is why things fall to the ground.",
     "Gravity is the force that pushes objects away from each other, which is why things float upward."),
    ("evaporation",
     "Evaporation is when a liquid, such as water, turns into a gas after it is heated.",
     "Evaporation is when a gas, such as steam, turns into a solid after it is cooled."),
    ("a noun",
     "A noun is a word that names a person, place, thing or idea, such as teacher or city.",
     "A noun is a word that describes an action, such as run or jump."),
    ("a verb",
     "A verb is a word that describes an action or a state, such as run, think or be.",
     "A verb is a word that names a person or a place, such as teacher or city."),
    ("a prime number",
     "A prime number is a whole number greater than one that can only be divided evenly by one and itself.",
     "A prime number is any whole number that can be divided evenly by two."),
    ("an ecosystem",
     "An ecosystem is a community of living things together with the air, water and soil they depend on.",
     "An ecosystem is a single animal together with the food it eats each day."),
    ("democracy",
     "Democracy is a system of government in which citizens choose their leaders by voting.",
     "Democracy is a system of government in which one ruler makes every decision alone."),
    ("inflation",
     "Inflation is a general rise in prices over time, so the same money buys less.",
     "Inflation is a general fall in prices over time, so the same money buys more."),
    ("a fraction",
     "A fraction is a number that stands for part of a whole, written as one number over another.",
     "A fraction is a number that is always larger than the whole it comes from."),
    ("erosion",
     "Erosion is the slow wearing away of rock and soil by wind, water or ice.",
     "Erosion is the fast building up of rock and soil by wind, water or ice."),
    ("a mammal",
     "A mammal is a warm blooded animal with hair or fur that feeds its young with milk.",
     "A mammal is a cold blooded animal with scales that lays eggs in water."),
    ("a volcano",
     "A volcano is an opening in the crust of the earth where melted rock, ash and gas escape.",
     "A volcano is a deep hole in the ocean where cold water and ice collect."),
    ("friction",
     "Friction is the force that resists motion when two surfaces rub against each other.",
     "Friction is the force that speeds up motion when two surfaces rub against each other."),
    ("a synonym",
     "A synonym is a word that means the same or nearly the same as another word, like big and large.",
     "A synonym is a word that means the opposite of another word, like big and small."),
    ("an algorithm",
     "An algorithm is a step by step set of instructions for solving a problem or doing a task.",
     "An algorithm is a random guess made without any plan or instructions."),
    ("the water cycle",
     "The water cycle is the movement of water from the ground up into the sky as vapor and back down as rain.",
     "The water cycle is the movement of water from the sky into the ground, where it stays forever."),
    ("a habitat",
     "A habitat is the natural home where a plant or animal lives and finds food and shelter.",
     "A habitat is the food that a plant or animal eats to grow."),
    ("an adjective",
     "An adjective is a word that describes a noun, such as red, tall or happy.",
     "An adjective is a word that joins two sentences, such as and or but."),
    ("a budget",
     "A budget is a plan for how much money you will earn and spend over a period of time.",
     "A budget is the money you spend without making any plan at all."),
)
