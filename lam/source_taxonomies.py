"""What the classes of pretrained networks' source taxonomies mean, for name-based transfer.

A network trained on Cityscapes or PASCAL VOC predicts that taxonomy's classes; mapping them
onto a fleet's target classes by name alone (lam.class_transfer) needs more than the bare
names, because the names are short and MiniLM reads some of them oddly ('terrain' is nearer
'road' than 'grass', 'traffic light' nearer 'road' than 'sign'). Each class here gets:

- `synonyms`: other names of the same thing, compared like the name itself. They come from
  the taxonomy's own published class definitions (Cityscapes' "class definitions" page,
  cityscapes-dataset.com/dataset-overview; PASCAL VOC 2012's devkit class list) and from the
  lemmas of the class's WordNet 3.0 synset, picked by hand: WordNet's lemma lists also hold
  ambiguous words ('plane', 'machine', 'wheel') that would match the wrong target.
- `broader`: what the class is a kind of, nearest first: a WordNet-style parent where WordNet
  has a useful one, then the taxonomy's own category (Cityscapes' labels.py `category`, VOC's
  superclasses), placed about as deep as WordNet places it. `map_synsets` discounts the i-th
  broader name by HYPERNYM_DISCOUNT**i, so how far down the list a name sits matters.
- `wnid`: the class's WordNet 3.0 noun sense (the ImageNet-style id), so that an installed
  WordNet adds its hypernym chain after `broader`, exactly like the vocabulary stage does for
  tagger labels. Written here because a bare name's first sense can be wrong ('rider' is
  first a horse rider; VOC's 'motorbike' is WordNet's minibike).

Everything is about the SOURCE classes' meanings, never about one target taxonomy: the same
table serves CamVid's 11 classes, a target with 'vehicle' / 'vegetation' classes, or
Cityscapes' own names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# Cityscapes trainIds 0-18, in id order (the networks' output channels 0-18).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# PASCAL VOC 2012's 21 segmentation classes, in label-index order (0 = background).
PASCAL_VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# Classes that mean "anything else": never mapped by name (VOC's background holds road, sky
# and buildings at once; no single target class is right for it).
CATCH_ALL: frozenset[str] = frozenset({"background", "void", "unlabeled", "unlabelled", "other"})


@dataclass(frozen=True)
class SourceMeaning:
    """What one source class means (see the module docstring); `why` documents the entry."""

    synonyms: tuple[str, ...] = ()
    broader: tuple[str, ...] = ()
    wnid: str = ""
    why: str = ""


_CS = "Cityscapes' definition"
CITYSCAPES_MEANINGS: Mapping[str, SourceMeaning] = MappingProxyType(
    {
        "road": SourceMeaning(
            ("street", "lane", "drivable surface"),
            ("flat ground",),
            "n04096066",
            f"{_CS}: 'part of ground on which cars usually drive, i.e. all lanes, all "
            "directions, all streets'; category flat",
        ),
        "sidewalk": SourceMeaning(
            ("pavement", "footpath"),
            ("flat ground",),
            "n04215402",
            f"{_CS}: ground 'designated for pedestrians or cyclists'; WordNet lemma pavement",
        ),
        "building": SourceMeaning(
            ("house", "skyscraper", "garage"),
            ("construction",),
            "n02913152",
            f"{_CS}: 'building, skyscraper, house, bus stop building, garage, car port'",
        ),
        "wall": SourceMeaning(
            ("standing wall",),
            ("construction",),
            "n04546855",
            f"{_CS}: 'individual standing wall'; category construction, as for building and "
            "fence (the bare name is as near 'fence' as 'building' for MiniLM)",
        ),
        "fence": SourceMeaning(
            ("fencing",),
            ("barrier", "construction"),
            "n03327234",
            "WordNet: fence, fencing -> barrier; category construction",
        ),
        "pole": SourceMeaning(
            ("sign pole", "traffic light pole", "post"),
            ("rod",),
            "n03976657",
            f"{_CS}: 'small mainly vertically oriented pole, e.g. sign pole, traffic light poles'",
        ),
        "traffic light": SourceMeaning(
            ("traffic signal", "stoplight"),
            ("sign", "visual signal"),
            "n06874185",
            "WordNet lemmas traffic signal, stoplight; WordNet: traffic light -> light -> "
            "visual signal -> signal, whose synset is {signal, signaling, sign}: a traffic "
            "light is a sign that lights up (the bare name is nearer 'road' for MiniLM)",
        ),
        "traffic sign": SourceMeaning(
            ("road sign", "street sign", "parking sign", "direction sign"),
            ("sign",),
            "n06794110",
            f"{_CS}: 'traffic signs, parking signs, direction signs'; WordNet: street sign -> sign",
        ),
        "vegetation": SourceMeaning(
            ("trees", "hedge", "vertical vegetation"),
            ("nature",),
            "n08436759",
            f"{_CS}: 'trees, hedges, all kinds of vertical vegetation'; category nature "
            "(MiniLM puts bare 'vegetation' only 0.45 from 'tree')",
        ),
        "terrain": SourceMeaning(
            ("grass", "soil", "sand", "horizontal vegetation"),
            ("vegetation", "nature"),
            "n08674563",
            f"{_CS}: 'grass, all kinds of horizontal vegetation, soil or sand'; category nature",
        ),
        "sky": SourceMeaning((), (), "n09436708", f"{_CS}: 'open sky'"),
        "person": SourceMeaning(
            ("pedestrian", "walker"),
            ("human",),
            "n00007846",
            f"{_CS}: a human who would walk (one who would ride is a rider): a pedestrian; "
            "category human",
        ),
        "rider": SourceMeaning(
            ("cyclist", "motorcyclist"),
            ("person", "human"),
            "n10530150",
            f"{_CS}: 'riders/drivers of bicycle, motorbike, scooter, ...'; WordNet sense 2 "
            "(rides a vehicle) -> traveler -> person; category human",
        ),
        "car": SourceMeaning(
            ("automobile", "jeep", "SUV", "van"),
            ("motor vehicle", "vehicle"),
            "n02958343",
            f"{_CS}: 'car, jeep, SUV, van with continuous body shape, caravan'; WordNet: car, "
            "automobile -> motor vehicle; category vehicle",
        ),
        "truck": SourceMeaning(
            ("lorry", "pickup truck", "box truck"),
            ("motor vehicle", "vehicle"),
            "n04490091",
            f"{_CS}: 'truck, box truck, pickup truck'; WordNet: truck -> motor vehicle",
        ),
        "bus": SourceMeaning(
            ("coach", "motorbus", "omnibus"),
            ("motor vehicle", "public transport", "vehicle"),
            "n02924116",
            f"{_CS}: 'bus for 9+ persons, public transport or long distance transport'; "
            "WordNet lemmas coach, motorbus, omnibus; a bus is a motor vehicle (WordNet only "
            "says public transport)",
        ),
        "train": SourceMeaning(
            ("tram", "streetcar", "trolley car", "railroad train"),
            ("self-propelled vehicle", "public transport", "vehicle"),
            "n04468005",
            f"{_CS}: 'vehicle on rails, e.g. tram, train'; in street scenes mostly trams, "
            "hence the WordNet lemmas of streetcar (tram, trolley car) and its parent "
            "self-propelled vehicle",
        ),
        "motorcycle": SourceMeaning(
            ("motorbike", "moped", "scooter", "bike"),
            ("motor vehicle", "two-wheeler", "vehicle"),
            "n03790512",
            f"{_CS}: 'motorbike, moped, scooter without the driver'; WordNet lemma bike; "
            "WordNet: motorcycle -> motor vehicle",
        ),
        "bicycle": SourceMeaning(
            ("bike", "cycle"),
            ("wheeled vehicle", "two-wheeler", "vehicle"),
            "n02834778",
            "WordNet lemmas bike, cycle -> wheeled vehicle; category vehicle",
        ),
    }
)

_VOC = "VOC superclass"
PASCAL_VOC_MEANINGS: Mapping[str, SourceMeaning] = MappingProxyType(
    {
        "aeroplane": SourceMeaning(
            ("airplane", "aircraft"),
            ("heavier-than-air craft", "craft", "vehicle"),
            "n02691156",
            f"WordNet: airplane -> heavier-than-air craft -> aircraft -> craft -> vehicle "
            f"({_VOC} vehicle, as deep as WordNet puts it); not 'plane' (ambiguous)",
        ),
        "bicycle": CITYSCAPES_MEANINGS["bicycle"],
        "bird": SourceMeaning((), ("vertebrate", "animal"), "n01503061", f"{_VOC} animal"),
        "boat": SourceMeaning(
            ("ship",),
            ("vessel", "craft", "vehicle"),
            "n02858304",
            f"WordNet: boat -> vessel -> craft -> vehicle ({_VOC} vehicle)",
        ),
        "bottle": SourceMeaning((), ("vessel", "container"), "n02876657", f"{_VOC} indoor"),
        "bus": CITYSCAPES_MEANINGS["bus"],
        "car": CITYSCAPES_MEANINGS["car"],
        "cat": SourceMeaning((), ("feline", "animal"), "n02121620", f"{_VOC} animal"),
        "chair": SourceMeaning((), ("seat", "furniture"), "n03001627", f"{_VOC} indoor"),
        "cow": SourceMeaning(("cattle",), ("bovine", "animal"), "n02403454", f"{_VOC} animal"),
        "diningtable": SourceMeaning(
            ("dining table", "table"),
            ("furniture",),
            "n03201208",
            f"VOC's name without its space; {_VOC} indoor",
        ),
        "dog": SourceMeaning((), ("canine", "animal"), "n02084071", f"{_VOC} animal"),
        "horse": SourceMeaning((), ("equine", "animal"), "n02374451", f"{_VOC} animal"),
        "motorbike": SourceMeaning(
            ("motorcycle", "moped", "scooter", "bike"),
            ("motor vehicle", "two-wheeler", "vehicle"),
            "n03790512",
            "VOC's motorbike is any motorcycle (WordNet's 'motorbike' is a minibike): the "
            "Cityscapes motorcycle entry",
        ),
        "person": SourceMeaning(
            ("people", "human being"),
            ("human",),
            "n00007846",
            f"{_VOC} person: people walking, riding or sitting (so not only pedestrians)",
        ),
        "pottedplant": SourceMeaning(
            ("potted plant", "pot plant", "houseplant"),
            ("plant",),
            "n11536230",
            f"VOC's name without its space; WordNet: pot plant -> plant; {_VOC} indoor",
        ),
        "sheep": SourceMeaning((), ("bovid", "animal"), "n02411705", f"{_VOC} animal"),
        "sofa": SourceMeaning(("couch",), ("seat", "furniture"), "n04256520", f"{_VOC} indoor"),
        "train": SourceMeaning(
            ("railroad train", "railway train", "locomotive"),
            ("public transport", "rail vehicle", "vehicle"),
            "n04468005",
            f"VOC's trains are railway trains (not the trams of Cityscapes' train class); "
            f"WordNet: train -> public transport; {_VOC} vehicle",
        ),
        "tvmonitor": SourceMeaning(
            ("tv monitor", "television", "computer monitor"),
            ("electronic equipment",),
            "n04405907",
            f"VOC's name without its space: TVs and computer screens; {_VOC} indoor",
        ),
    }
)

SOURCE_TAXONOMIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"cityscapes": CITYSCAPES_CLASSES, "pascal_voc": PASCAL_VOC_CLASSES}
)
SOURCE_MEANINGS: Mapping[str, Mapping[str, SourceMeaning]] = MappingProxyType(
    {"cityscapes": CITYSCAPES_MEANINGS, "pascal_voc": PASCAL_VOC_MEANINGS}
)
