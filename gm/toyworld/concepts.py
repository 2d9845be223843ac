"""Concepts of the toy world that textual inversion learns as new words, and how they are measured.

A concept is a held-out combination of attributes (never drawn in pretraining, gm.toyworld.world.HELD_OUT):
the model knows each attribute but has never seen them together, so a word that brings the combination
back was learned from the user's pictures. Measured as in the textual-inversion paper, by the meter:

- concept: share of samples of the word's prompts that show every attribute of the concept;
- prompt: share that also show what the rest of the prompt asks (another background for an object,
  another shape for a style): does the word compose with the rest of the prompt.
"""
import itertools
from dataclasses import dataclass

import numpy as np

from gm.toyworld import meter
from gm.toyworld.world import SHAPES, Thing, article, concept_scene, is_held_out, render


@dataclass(frozen=True)
class ToyConcept:
    """A concept: its attributes (None = any), the property textual inversion learns, training backgrounds."""

    name: str
    learnable_property: str
    initializer_token: str
    shape: str = None
    colour: str = None
    pattern: str = None
    backgrounds: tuple = ("white", "blue", "green", "gray", "black")

    @property
    def attributes(self):
        return {k: v for k, v in (("shape", self.shape), ("colour", self.colour), ("pattern", self.pattern)) if v}

    def training_scene(self, rng, size, index):
        """Training picture ``index``'s scene: the object on the next training background, or for a
        style, the pattern on the next shape (in a random colour) whose combination was seen in pretraining."""
        background = self.backgrounds[index % len(self.backgrounds)]
        if self.learnable_property == "object":
            return concept_scene(rng, size, background, **self.attributes)
        shapes = [s for s in SHAPES if not is_held_out(Thing(s, "red", self.pattern, 0, 0, 1, 0))]
        return concept_scene(rng, size, background, shape=shapes[index % len(shapes)], pattern=self.pattern)

    def caption(self, scene):
        """The training caption of a scene, ``{}`` standing for the word."""
        thing = scene.things[0]
        if self.learnable_property == "object":
            return f"a {{}} on a {scene.background} background"
        return f"{article(f'{thing.colour} {thing.shape}')} in {{}} style on a {scene.background} background"

    def test_prompts(self, word):
        """{measure: (prompt, attributes the picture must show)}, as the textual-inversion paper measures a
        word: does it bring the concept back (reconstruction), and does it compose with the rest of the
        prompt (editability: another background for an object, another shape for a style)."""
        if self.learnable_property == "object":
            return {"reconstruction": (f"a photo of a {word}", self.attributes),
                    "editability": (f"a {word} on a green background", {**self.attributes, "background": "green"})}
        return {"reconstruction": (f"a square in {word} style", self.attributes),
                "editability": (f"a circle in {word} style", {**self.attributes, "shape": "circle"})}


CONCEPTS = {
    "toy_star": ToyConcept("toy_star", "object", "star", shape="star", colour="orange", pattern="striped"),
    "toy_dotted": ToyConcept("toy_dotted", "style", "plain", pattern="dotted"),
}


def training_set(concept, count=5, size=64, seed=0):
    """[(picture uint8 [size, size, 3], caption with ``{}``)] of a concept."""
    rng = np.random.default_rng([seed, 77])
    scenes = [concept.training_scene(rng, size, i) for i in range(count)]
    return [(render(s), concept.caption(s)) for s in scenes]


def score(concept, wanted, pictures):
    """{"concept": share of pictures showing every attribute of the concept, "prompt": share also showing
    ``wanted`` (what the prompt asks), and for each smaller set of the concept's attributes (``"colour"``,
    ``"colour+pattern"``, ...) the share showing those}."""
    readings = [meter.read(p) for p in pictures]
    shares = {"concept": float(np.mean([r.shows(**concept.attributes) for r in readings])),
              "prompt": float(np.mean([r.shows(**wanted) for r in readings]))}
    names = sorted(concept.attributes)
    for size in range(1, len(names)):
        for subset in itertools.combinations(names, size):
            wanted_part = {n: concept.attributes[n] for n in subset}
            shares["+".join(subset)] = float(np.mean([r.shows(**wanted_part) for r in readings]))
    return shares


def attribute_share(concept, scores):
    """Mean, over the test prompts' ``scores`` ({measure: score}) and the concept's attributes, of the share
    of samples showing that attribute: a graded reading that moves before whole concepts appear."""
    single = len(concept.attributes) == 1
    return float(np.mean([v["concept"] if single else v[a] for v in scores.values() for a in concept.attributes]))


def measure(pipeline, concept, word, samples=32, size=64, steps=20, guidance=5.0, seed=0, sampler="euler"):
    """Sample each test prompt ``samples`` times with ``word`` (a learned token, or plain words) and score
    the pictures: ({measure: score}, {measure: pictures}); see :meth:`ToyConcept.test_prompts`."""
    from gm.modules.diffusionmodules.sampling import make_sampler

    scores, pictures = {}, {}
    for name, (prompt, wanted) in concept.test_prompts(word).items():
        pictures[name] = pipeline.sample([prompt] * samples, size, size, seed=seed,
                                         sampler=make_sampler(sampler, steps, guidance))
        scores[name] = score(concept, wanted, pictures[name])
    return scores, pictures
