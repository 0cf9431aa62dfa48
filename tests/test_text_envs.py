"""Text envs: TextWorld games made offline, ALFWorld's text engine on hand-written games, RL4VLM's ALFWorld reward."""

import json
import os
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlm_env_ppo.envs  # noqa: F401  (registers the ids)
from vlm_env_ppo.envs.alfworld_env import (
    ALFWorldTask,
    alfworld_reward,
    goal_conditions_met,
    load_task,
    task_description_from_text,
)
from vlm_env_ppo.envs.textworld_env import (
    TEXT_CHARSET,
    clean_text,
    is_meta_command,
    normalize_command,
    strip_banner,
    text_space,
)

CLEAN_APPLE = "pick_clean_then_place_in_recep-Apple-None-Fridge-1/trial_tiny_clean_apple"
BOOK_LAMP = "look_at_obj_in_light-Book-None-DeskLamp-1/trial_tiny_book_lamp"
CLEAN_APPLE_WALKTHROUGH = [
    "go to countertop 1",
    "take apple 1 from countertop 1",
    "go to sinkbasin 1",
    "clean apple 1 with sinkbasin 1",
    "go to fridge 1",
    "open fridge 1",
    "move apple 1 to fridge 1",
]
BOOK_LAMP_WALKTHROUGH = ["go to bed 1", "take book 1 from bed 1", "go to sidetable 1", "use desklamp 1"]


def same_step_vector_env(make, num_envs):
    return gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


# --- pure helpers (no game engine needed) --------------------------------------------------------------------------


def test_commands_are_one_clean_line():
    assert normalize_command("  take   key\nfrom box \t") == "take key from box"
    assert normalize_command("\\q") == "q"  # dumb-frotz escape commands never reach the interpreter
    assert normalize_command(np.str_("look")) == "look"
    assert normalize_command("x" * 5000) == "x" * 1024
    assert normalize_command("café") == "cafe"
    assert is_meta_command("quit") and is_meta_command("RESTART now") and is_meta_command("tw-print x")
    assert not is_meta_command("quilt the bed") and not is_meta_command("take twig")


def test_text_is_always_inside_the_text_space():
    space = text_space(64)
    for text in ["Olá “quoted” — naïve\r\nline", "\x00\x07bell", "ok\tfine\n", "é" * 100]:
        cleaned = clean_text(text, 64)
        assert space.contains(cleaned) and set(cleaned) <= TEXT_CHARSET
    assert clean_text("naïve “x”\r\n") == "naive ?x?\n"


def test_strip_banner_removes_only_the_title_art():
    banner = "\n\n   ____  __ \n  |    \\/  |\n   \\$$$$$ $$ \n\nYou are in a room.\n"
    assert strip_banner(banner) == "You are in a room.\n"
    assert strip_banner("\n\n-= Kitchen =-\nA kitchen.") == "\n\n-= Kitchen =-\nA kitchen."
    assert strip_banner("You take the key.") == "You take the key."


def test_rl4vlm_reward_numbers():
    # RL4VLM compute_reward: 50 * won + goal_condition_success_rate - 1 * (inadmissible).
    assert alfworld_reward(False, 0.0, 0.0, True) == 0.0
    assert alfworld_reward(False, 0.0, 0.0, False) == -1.0
    assert alfworld_reward(False, 1 / 3, 0.0, True) == pytest.approx(1 / 3)
    assert alfworld_reward(False, 1 / 3, 1 / 3, True) == pytest.approx(1 / 3)  # the level is paid every step
    assert alfworld_reward(True, 1.0, 1 / 3, True) == 51.0
    increase = {"goal_condition_mode": "increase"}
    assert alfworld_reward(False, 1 / 3, 1 / 3, True, **increase) == 0.0
    assert alfworld_reward(True, 1.0, 1 / 3, True, **increase) == pytest.approx(50 + 2 / 3)
    assert alfworld_reward(False, 0.0, 1 / 3, False, **increase) == pytest.approx(-4 / 3)
    custom = {"success_reward": 10.0, "goal_condition_coef": 2.0, "inadmissible_penalty": 0.5}
    assert alfworld_reward(True, 1.0, 0.5, False, **custom) == 11.5
    with pytest.raises(ValueError, match="goal_condition_mode"):
        alfworld_reward(False, 0.0, 0.0, True, goal_condition_mode="delta")


def fact(name, *args):
    return SimpleNamespace(name=name, arguments=[SimpleNamespace(name=arg) for arg in args])


def test_goal_conditions_follow_alfworld_task_definitions():
    base = [
        fact("objecttype", "mug_bar_1", "mugtype"),
        fact("objecttype", "mug_bar_2", "mugtype"),
        fact("receptacletype", "shelf_bar_1", "shelftype"),
        fact("receptacletype", "shelf_bar_2", "shelftype"),
    ]
    two = ALFWorldTask("pick_two_obj_and_place", "Mug", parent_target="Shelf")
    assert goal_conditions_met(base, two, won=False) == (0, 2)
    one_each = base + [
        fact("inreceptacle", "mug_bar_1", "shelf_bar_1"),
        fact("inreceptacle", "mug_bar_2", "shelf_bar_2"),
    ]
    assert goal_conditions_met(one_each, two, won=False) == (1, 2)  # both must share one receptacle
    both = base + [fact("inreceptacle", "mug_bar_1", "shelf_bar_1"), fact("inreceptacle", "mug_bar_2", "shelf_bar_1")]
    assert goal_conditions_met(both, two, won=True) == (2, 2)
    simple = ALFWorldTask("pick_and_place_simple", "Mug", parent_target="Shelf")
    assert goal_conditions_met(base, simple, won=False) == (0, 1)
    assert goal_conditions_met(both, simple, won=True) == (1, 1)
    heat = ALFWorldTask("pick_heat_then_place_in_recep", "Mug", parent_target="Shelf")
    assert goal_conditions_met(base + [fact("ishot", "mug_bar_2")], heat, won=False) == (1, 3)
    hot_elsewhere = one_each[:-1] + [fact("ishot", "mug_bar_2")]  # one mug placed, the other one hot
    assert goal_conditions_met(hot_elsewhere, heat, won=False) == (2, 3)
    assert goal_conditions_met(base, None, won=True) == (1, 1)  # no task known: the goal itself


def test_task_from_traj_data_or_folder_name(tmp_path):
    trial = tmp_path / "look_at_obj_in_light-Pen-None-DeskLamp-308" / "trial_T1"
    trial.mkdir(parents=True)
    assert load_task(str(trial / "game.tw-pddl")) == ALFWorldTask(
        "look_at_obj_in_light", "Pen", toggle_target="DeskLamp"
    )
    (trial / "traj_data.json").write_text(
        json.dumps(
            {"task_type": "pick_and_place_simple", "pddl_params": {"object_target": "Pen", "parent_target": "Desk"}}
        )
    )
    assert load_task(str(trial / "game.tw-pddl")) == ALFWorldTask("pick_and_place_simple", "Pen", parent_target="Desk")
    assert load_task(str(tmp_path / "somewhere" / "game.tw-pddl")) is None
    intro = "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in a room.\n\nYour task is to: put a clean apple in fridge."
    assert task_description_from_text(intro) == "put a clean apple in fridge"


# --- TextWorld -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tw_games(textworld_games):  # conftest: generated once per session
    return textworld_games


@pytest.fixture
def tw_env(tw_games):
    from vlm_env_ppo.envs.textworld_env import TextWorldEnv

    env = TextWorldEnv(game_files=tw_games)
    yield env
    env.close()


def test_textworld_games_are_made_offline_and_reused(tw_games):
    from vlm_env_ppo.envs.textworld_env import find_textworld_games, make_textworld_games

    assert len(tw_games) == 3 and len(set(tw_games)) == 3
    for path in tw_games:
        assert path.endswith(".z8") and os.path.isfile(path) and os.path.isfile(path[: -len(".z8")] + ".json")
    folder = os.path.dirname(tw_games[0])
    assert find_textworld_games(folder) == sorted(tw_games)
    start = time.perf_counter()
    assert make_textworld_games(folder, num_games=3, seed=0) == tw_games  # same seed: same games, found on disk
    assert time.perf_counter() - start < 5


def test_textworld_reset_gives_text_and_admissible_commands(tw_env):
    observation, info = tw_env.reset(seed=0)
    assert isinstance(observation, str) and tw_env.observation_space.contains(observation)
    assert "$$$$" not in observation and "-=" in observation  # title art removed, the first room kept
    assert info["objective"] and info["objective"] in observation and info["task_description"] == info["objective"]
    commands = info["admissible_commands"]
    assert commands and all(isinstance(c, str) for c in commands) and "look" in commands
    assert info["policy_commands"] and info["policy_commands"][0] in commands
    assert info["is_success"] is False and info["score"] == 0 and info["max_score"] >= 1
    assert info["game_file"] in tw_env.game_files and info["action_admissible"] is True


def test_textworld_walkthrough_wins_with_score_rewards(tw_env):
    for game_index in range(len(tw_env.game_files)):
        _, info = tw_env.reset(seed=0, options={"game_index": game_index})
        rewards, terminated, truncated = [], False, False
        for command in list(info["policy_commands"]):
            assert command in info["admissible_commands"]
            _, reward, terminated, truncated, info = tw_env.step(command)
            rewards.append(reward)
            assert info["action_admissible"] is True
        assert terminated and not truncated and info["is_success"] and info["won"]
        assert sum(rewards) == info["max_score"] == info["score"] and rewards[-1] > 0
        assert tw_env.step("look")[2] is True  # a finished game stays finished until reset


def test_textworld_illegal_commands_do_not_crash(tw_env):
    _, info = tw_env.reset(seed=1)
    walkthrough = list(info["policy_commands"])
    commands = [
        "dance wildly",
        "",
        "\\q",
        "quit",
        "restart",
        "undo",
        "tw-extra-infos description",
        "naïve ☃",
        "x" * 3000,
    ]
    for command in [*commands, "look\nquit"]:
        observation, reward, terminated, truncated, info = tw_env.step(command)
        assert tw_env.observation_space.contains(observation)
        assert reward == 0.0 and not terminated and not truncated and info["action_admissible"] is False
    assert tw_env.step("quit")[0] == "That command is not available in this game."
    assert "recognise" in tw_env.step("dance wildly")[0]
    assert "<description>" not in tw_env.step("look")[0]  # the debugging verb never reached the game
    for command in walkthrough:  # the session survived: the game can still be won
        _, _, terminated, _, info = tw_env.step(command)
    assert terminated and info["is_success"]


def test_textworld_truncates_at_the_step_limit(tw_games):
    from vlm_env_ppo.envs.textworld_env import TextWorldEnv

    env = TextWorldEnv(game_files=tw_games, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step("look")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.close()


def test_textworld_seeding_is_reproducible(tw_games):
    from vlm_env_ppo.envs.textworld_env import TextWorldEnv

    def episode_starts(seed):
        env = TextWorldEnv(game_files=tw_games)
        starts = [env.reset(seed=seed)[1]["game_file"]] + [env.reset()[1]["game_file"] for _ in range(5)]
        env.close()
        return starts

    assert episode_starts(3) == episode_starts(3)
    assert len({tuple(episode_starts(seed)) for seed in range(4)}) > 1
    assert len({game for seed in range(6) for game in episode_starts(seed)}) == len(tw_games)


def test_textworld_gym_make_and_check_env(tw_games):
    env = gym.make("vlm_env_ppo/TextWorld-v0", game_files=tw_games, render_mode="ansi")
    observation, _ = env.reset(seed=0)
    assert env.render() == observation
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    with pytest.raises(ValueError, match="exactly one"):
        gym.make("vlm_env_ppo/TextWorld-v0")
    with pytest.raises(ValueError, match="no frames"):
        env.unwrapped.__class__(game_files=tw_games, render_mode="rgb_array")


def test_textworld_in_a_same_step_vector_env(tw_games):
    from vlm_env_ppo.envs.textworld_env import TextWorldEnv

    envs = same_step_vector_env(lambda: TextWorldEnv(game_files=tw_games), 2)
    observations, infos = envs.reset(seed=[0, 1])
    # A batch of text observations is a tuple of str.
    assert isinstance(observations, tuple) and all(isinstance(o, str) for o in observations)
    assert isinstance(envs.observation_space, gym.spaces.Tuple)
    plan = list(infos["policy_commands"][0])
    for step, command in enumerate(plan):
        actions = [command, "look"] if step % 2 == 0 else (command, "look")  # lists and tuples both work
        observations, rewards, terminated, truncated, infos = envs.step(actions)
    assert terminated.tolist() == [True, False] and rewards[0] > 0 and not truncated.any()
    final = infos["final_info"]
    assert final["is_success"][0] and final["score"][0] == final["max_score"][0]
    assert infos["final_obs"][0] != observations[0] and "-=" in observations[0]  # env 0 restarted on the same step
    assert infos["admissible_commands"][0] and not infos["is_success"][0]  # the new episode's info
    envs.close()


# --- ALFWorld ------------------------------------------------------------------------------------------------------


@pytest.fixture
def alf_data(alfworld_data):  # conftest: the hand-written trials with their games built
    return alfworld_data


def make_alf_env(alf_data, **kwargs):
    from vlm_env_ppo.envs.alfworld_env import ALFWorldEnv

    return ALFWorldEnv(data_dir=alf_data, **kwargs)


def test_alfworld_games_are_built_from_pddl_problems(alf_data):
    from vlm_env_ppo.envs.alfworld_env import find_alfworld_games

    game = json.loads((alf_data / CLEAN_APPLE / "game.tw-pddl").read_text())
    assert {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"} <= set(game)
    assert game["solvable"] is True and game["walkthrough"] == CLEAN_APPLE_WALKTHROUGH
    assert "UNKNOWN GOAL" not in game["grammar"]
    assert len(find_alfworld_games(alf_data)) == 2
    assert find_alfworld_games(alf_data, task_types=[3]) == [str(alf_data / CLEAN_APPLE / "game.tw-pddl")]
    assert find_alfworld_games(alf_data, task_types=[1]) == []


@pytest.mark.parametrize(
    ("trial", "walkthrough", "rewards", "goal_conditions"),
    [
        (CLEAN_APPLE, CLEAN_APPLE_WALKTHROUGH, [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 51], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 1]),
        (BOOK_LAMP, BOOK_LAMP_WALKTHROUGH, [0, 0.5, 0.5, 51], [0, 0.5, 0.5, 1]),
    ],
)
def test_alfworld_walkthrough_earns_rl4vlm_rewards(alf_data, trial, walkthrough, rewards, goal_conditions):
    env = make_alf_env(alf_data)
    observation, info = env.reset(seed=0, options={"game_file": str(alf_data / trial / "game.tw-pddl")})
    assert observation.startswith("-= Welcome to TextWorld, ALFRED! =-") and env.observation_space.contains(observation)
    assert info["task_description"] and info["task_description"] in observation
    assert info["task_type"] == trial.split("-")[0] and info["goal_condition_success_rate"] == 0.0
    assert walkthrough[0] in info["admissible_commands"] and info["is_success"] is False
    got_rewards, got_conditions = [], []
    for command in walkthrough:
        assert command in info["admissible_commands"]
        observation, reward, terminated, truncated, info = env.step(command)
        got_rewards.append(reward)
        got_conditions.append(info["goal_condition_success_rate"])
    assert got_rewards == pytest.approx(rewards) and got_conditions == pytest.approx(goal_conditions)
    assert terminated and not truncated and info["is_success"] and info["won"]
    env.close()


def test_alfworld_increase_mode_pays_progress_once(alf_data):
    env = make_alf_env(alf_data, goal_condition_mode="increase", task_types=[3])
    env.reset(seed=0)
    rewards = [env.step(command)[1] for command in CLEAN_APPLE_WALKTHROUGH]
    assert rewards == pytest.approx([0, 0, 0, 1 / 3, 0, 0, 50 + 2 / 3])


def test_alfworld_inadmissible_commands_are_penalised_not_fatal(alf_data):
    env = make_alf_env(alf_data, task_types=[3])
    env.reset(seed=0)
    for command in ["dance", "", "take apple 1 from countertop 1", "x" * 3000, "naïve ☃"]:  # the take: not there yet
        observation, reward, terminated, truncated, info = env.step(command)
        assert observation == "Nothing happens." and reward == -1.0 and info["action_admissible"] is False
        assert not terminated and not truncated
    observation, reward, _, _, info = env.step("  GO TO\nCounterTop 1 ")  # normalised to an admissible command
    assert info["action_admissible"] and reward == 0.0 and "apple 1" in observation
    env.close()


def test_alfworld_truncation_seeding_and_expert_plan(alf_data):
    env = make_alf_env(alf_data, max_episode_steps=2, expert_plan=True)
    _, info = env.reset(seed=0, options={"game_index": 1})
    assert info["expert_plan"] == CLEAN_APPLE_WALKTHROUGH
    assert env.step("look")[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step("look")
    assert (terminated, truncated) == (False, True) and info["expert_plan"] == CLEAN_APPLE_WALKTHROUGH
    starts = lambda seed: [env.reset(seed=seed)[1]["game_file"]] + [env.reset()[1]["game_file"] for _ in range(5)]
    assert starts(7) == starts(7) and len({game for seed in range(4) for game in starts(seed)}) == 2
    env.close()


def test_alfworld_gym_make_check_env_and_vector_env(alf_data):
    env = gym.make("vlm_env_ppo/ALFWorld-v0", data_dir=str(alf_data), task_types=[2])
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    envs = same_step_vector_env(lambda: make_alf_env(alf_data, task_types=[2]), 2)
    observations, infos = envs.reset(seed=0)
    assert isinstance(observations, tuple) and isinstance(observations[0], str)
    for command in BOOK_LAMP_WALKTHROUGH:
        observations, rewards, terminated, truncated, infos = envs.step([command, "dance"])
    assert terminated.tolist() == [True, False] and not truncated.any() and rewards.tolist() == [51.0, -1.0]
    assert infos["final_info"]["goal_condition_success_rate"][0] == 1.0 and infos["final_info"]["is_success"][0]
    assert observations[0].startswith("-= Welcome to TextWorld, ALFRED! =-")  # same-step autoreset
    envs.close()


def test_alfworld_errors_say_what_to_do(alf_data, tmp_path):
    from vlm_env_ppo.envs.alfworld_env import ALFWorldEnv

    with pytest.raises(FileNotFoundError, match="alfworld-download"):
        ALFWorldEnv(data_dir=tmp_path)
    with pytest.raises(ValueError, match="goal_condition_mode"):
        ALFWorldEnv(data_dir=alf_data, goal_condition_mode="delta")
    try:
        import ai2thor  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="ai2thor"):
            ALFWorldEnv(data_dir=alf_data, render_mode="rgb_array")
        assert ALFWorldEnv.metadata["render_modes"] == []  # so VLM adapters choose the text game
    text_only = ALFWorldEnv(data_dir=alf_data)
    text_only.reset(seed=0)
    assert text_only.render() is None
    text_only.close()
