"""Named configs of reasoning-gym generators: `rg/<dataset>@<config>` is the generator with these
parameters (the generator's own config fields), and the name travels in every provenance record.

Difficulty is chosen so that a 135M model can learn the task from a few hundred examples
(short questions, one-line answers). `rg/<dataset>` alone is the generator's own defaults.
"""

from __future__ import annotations

_ADD = {"operators": ("+", "-"), "allow_parentheses": False, "allow_negation": False}

CONFIGS: dict[str, dict[str, dict]] = {
    # arithmetic
    "basic_arithmetic": {
        "add-1d": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, **_ADD),
        "add3-1d": dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1, **_ADD),
        "add-2d": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, **_ADD),
        "mul-1d": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ("*",),
                       "allow_parentheses": False, "allow_negation": False},
    },
    "products": {"1d": {"min_digits": 1, "max_digits": 1}, "2d": {"min_digits": 1, "max_digits": 2}},
    "gcd": {"le20": {"max_value": 20}, "le40": {"max_value": 40}, "le60": {"max_value": 60},
            "le100": {"max_value": 100}},
    "lcm": {"le20": {"max_value": 20}, "le50": {"max_value": 50}},
    "count_bits": {"le255": {"max_n": 255}, "le1023": {"max_n": 1023}},
    "leg_counting": {
        "1-3x9": {"min_animals": 1, "max_animals": 3, "max_instances": 9},
        "1-2x5": {"min_animals": 1, "max_animals": 2, "max_instances": 5},
        "3x3": {"min_animals": 3, "max_animals": 3, "max_instances": 3},
    },
    "decimal_chain_sum": {"2t1d": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                       "min_decimal_places": 1, "max_decimal_places": 1},
                          "3t1d": {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1,
                                   "min_decimal_places": 1, "max_decimal_places": 1},
                          "2t2d": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2,
                                   "min_decimal_places": 1, "max_decimal_places": 1}},
    "fraction_simplification": {"plain": {"max_value": 100, "max_factor": 10, "styles": ("plain",)}},
    "prime_factorization": {"le100": {"max_value": 100}},
    "bitwise_arithmetic": {"d1": {"difficulty": 1}},
    "power_function": {"int": {"min_base": -9, "max_base": 9, "min_exponent": 0, "max_exponent": 3}},
    "decimal_arithmetic": {"2t1p": {"min_num_decimal_places": 1, "max_num_decimal_places": 1,
                                        "min_terms": 2, "max_terms": 2}},
    # algorithmic
    "letter_counting": {"3-6w": {"min_words": 3, "max_words": 6}},
    "spell_backward": {"3-5": {"min_word_len": 3, "max_word_len": 5}},
    "base_conversion": {"le100": {"min_base": 2, "max_base": 10, "max_value": 100},
                        "2-3-le50": {"min_base": 2, "max_base": 3, "max_value": 50},
                        "hex-le255": {"min_base": 2, "max_base": 16, "max_value": 255}},
    "count_primes": {"le100": {"max_n": 100}},
    "number_filtering": {"small": {"min_numbers": 3, "max_numbers": 5, "max_decimals": 0,
                                       "min_value": -50.0, "max_value": 50.0}},
    "number_sorting": {"small": {"min_numbers": 3, "max_numbers": 5, "max_decimals": 0,
                                     "min_value": -50.0, "max_value": 50.0}},
    "word_sorting": {"short": {"min_words": 3, "max_words": 5, "max_word_length": 6}},
    "word_sequence_reversal": {"short": {"min_words": 3, "max_words": 5}, "long": {"min_words": 9, "max_words": 12}},
    "caesar_cipher": {"short": {"min_words": 1, "max_words": 3, "min_rotation": 1, "max_rotation": 3},
                      "rot1": {"min_words": 1, "max_words": 3, "min_rotation": 1, "max_rotation": 1}},
    "sentence_reordering": {"short": {"min_words_in_sentence": 3, "max_words_in_sentence": 6}},
    "binary_alternation": {"short": {"min_n": 4, "max_n": 8}},
    "palindrome_generation": {"short": {"min_length": 3, "max_length": 5}},
    "letter_jumble": {"short": {"min_words": 1, "max_words": 3, "max_word_len": 6}},
    "ab": {"4": {"length": 4}},
    "group_anagrams": {"small": {"min_anagram_groups": 2, "max_anagram_groups": 2, "min_words_per_group": 2,
                                 "max_words_per_group": 2}},
    "spiral_matrix": {"2-3": {"min_n": 2, "max_n": 3}},
    # games, cognition, graphs
    "maze": {"small": {"min_dist": 2, "max_dist": 4, "min_grid_size": 5, "max_grid_size": 6},
             "mid": {"min_dist": 3, "max_dist": 6, "min_grid_size": 6, "max_grid_size": 7}},
    "sokoban": {"small": {"min_w": 6, "min_h": 6, "max_w": 6, "max_h": 6, "min_boxes": 1, "max_boxes": 1,
                          "max_depth": 10}},
    "countdown": {"small": {"min_numbers": 3, "max_numbers": 3, "max_value": 10, "min_target": 10, "max_target": 50}},
    "tsumego": {"9x9": {"min_board_size": 9, "max_board_size": 9, "max_stones": 8}},
    "color_cube_rotation": {"1rot": {"min_rotations": 1, "max_rotations": 1},
                            "2rot": {"min_rotations": 2, "max_rotations": 2}},
    "number_sequence": {"long": {"min_terms": 6, "max_terms": 7, "min_value": -20, "max_value": 20,
                                 "max_complexity": 1},
                        "short": {"min_terms": 4, "max_terms": 5, "min_value": -20, "max_value": 20,
                                      "max_complexity": 1}},
    "course_schedule": {"small": {"min_num_courses": 3, "max_num_courses": 4},
                        "mid": {"min_num_courses": 5, "max_num_courses": 6}},
    "needle_haystack": {"small": {"min_num_statements": 5, "max_num_statements": 10}},
    "rectangle_count": {"small": {"max_rectangles": 2, "width": 20, "height": 10}},
    "largest_island": {"small": {"min_rows": 4, "max_rows": 5, "min_cols": 4, "max_cols": 5}},
    "shortest_path": {"small": {"min_rows": 3, "max_rows": 4, "min_cols": 3, "max_cols": 4}},
    "path_star": {"small": {"min_path_length": 3, "max_path_length": 3, "degree": 2, "node_range": 100}},
    # algebra, logic, geometry, probability, arc
    "simple_equations": {"2t20": {"min_terms": 2, "max_terms": 2, "max_value": 20, "operators": ("+", "-"),
                                      "operators_weights": (0.5, 0.5)},
                         "pm-9": {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 9,
                                  "operators": ("+", "-"), "operators_weights": (0.5, 0.5)}},
    "polynomial_multiplication": {"lin": {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 5,
                                          "min_degree": 0, "max_degree": 1, "min_polynomials": 2,
                                          "max_polynomials": 2, "variables": ("x",)}},
    "simple_geometry": {"tri": {"min_sides": 3, "max_sides": 3}},
    "simple_integration": {"1t": {"min_terms": 1, "max_terms": 1, "min_degree": 1, "max_degree": 4,
                                  "max_bounds": 9, "symbols": ("x",)}},
    "zebra_puzzles": {"2x2": {"num_people": 2, "num_characteristics": 2}},
    "arc_1d": {"8-10": {"min_size": 8, "max_size": 10, "num_train": 2}},
    "circuit_logic": {"small": {"min_terms": 2, "max_terms": 3, "min_inputs": 2, "max_inputs": 2}},
    "complex_arithmetic": {"add-3": {"operations": ("+",), "operations_weights": (1.0,), "min_real": -3,
                                     "max_real": 3, "min_imag": -3, "max_imag": 3},
                           "add-5": {"operations": ("+", "-"), "operations_weights": (0.5, 0.5), "min_real": -5,
                                     "max_real": 5, "min_imag": -5, "max_imag": 5}},
    "rotten_oranges": {"3-4": {"min_n": 3, "max_n": 4}},
    "coin_flip": {"small": {"min_trials": 3, "max_trials": 5}},
    "self_reference": {"d1": {"difficulty": 1}},
}


def config_params(dataset: str, config: str | None) -> dict:
    """The generator parameters of `dataset@config` ({} for the generator's defaults)."""
    if config is None:
        return {}
    named = CONFIGS.get(dataset, {})
    if config not in named:
        known = ", ".join(sorted(named)) or "none"
        raise KeyError(f"rg/{dataset}@{config}: no config named {config!r} for {dataset} "
                       f"(named configs: {known}; see lorahub_serve/data/rg_configs.py)")
    return dict(named[config])
