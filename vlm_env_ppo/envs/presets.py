"""Named settings of the games that published systems configure differently (`rules="verl-agent"`, ...)."""

from __future__ import annotations


def resolve_rules(rules, presets: dict, game: str, rules_class: type):
    """``rules`` itself unless it is a name, else the preset of ``presets`` it names.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if not isinstance(rules, str):
        return rules
    if rules not in presets:
        raise ValueError(
            f"Unknown {game} rules {rules!r}; known: {sorted(presets)} (or pass a {rules_class.__name__})."
        )
    return presets[rules]
