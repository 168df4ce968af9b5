"""What a stop signal means under SLURM, from the job states SLURM 22.05 really reports.

The fixtures in tests/assets/slurm/ are captured from a real SLURM 22.05.8 cluster
(scripts/slurm/local_cluster.sh) with a job that traps SIGTERM: `scontrol show job -o` (the text
form) and the same job's record of `squeue --json` (openapi v0.0.38, what `scontrol --json show job`
prints on SLURM >= 23.02, whose 22.05 build has no --json), for a cancel, a partition preemption
(PreemptMode=REQUEUE, and CANCEL with GraceTime), an admin's `scontrol requeue`, a time limit and a
`scancel --signal=TERM`. The host lists are checked against `scontrol show hostnames` outputs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from resnet_repro.cluster import slurm
from resnet_repro.cluster.distributed import LOCAL_AGENT_VAR, detect
from resnet_repro.config import UserError

ASSETS = Path(__file__).parent / "assets" / "slurm"
JOB_IDS = {  # fixture -> the job id it shows
    "running": "2",
    "cancel_completing": "1",
    "cancelled": "1",
    "preempt_requeue_completing": "2",
    "preempt_requeue_pending": "2",
    "admin_requeue_completing": "4",
    "timeout_completing": "5",
    "timeout": "5",
    "user_sigterm_running": "6",
    "preempt_cancel_grace_running": "7",
    "preempt_cancel_completing": "7",
    "preempted": "7",
}


def view(name: str, form: str) -> slurm.JobView:
    text = (ASSETS / f"{name}.{form}").read_text()
    parse = slurm.parse_job_json if form == "json" else slurm.parse_job_text
    return parse(text, JOB_IDS[name])


# ------------------------------------------------------------------------------------ host lists


@pytest.mark.parametrize(
    "line", (ASSETS / "hostnames_22.05.tsv").read_text().splitlines(), ids=lambda line: line.split("\t")[0]
)
def test_host_list_expands_as_scontrol_show_hostnames_does(line: str):
    nodelist, hosts = line.split("\t")
    assert slurm.expand_hostlist(nodelist) == hosts.split()


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        # SLURM 22.05's own `scontrol show hostnames` calls these "Invalid hostlist"
        ("gpu[01-04]-ib", ["gpu01-ib", "gpu02-ib", "gpu03-ib", "gpu04-ib"]),
        ("x[1-2]y[3-4]z", ["x1y3z", "x1y4z", "x2y3z", "x2y4z"]),
        ("gpu[01-02]-ib,cpu[9-10]", ["gpu01-ib", "gpu02-ib", "cpu9", "cpu10"]),
    ],
)
def test_host_list_with_a_suffix_or_two_ranges_expands_every_host(nodelist: str, hosts: list[str]):
    assert slurm.expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["gpu[01-04", "gpu[a-b]", "gpu[4-1]", "a,,b"])
def test_a_malformed_host_list_is_a_user_error_naming_it(nodelist: str):
    with pytest.raises(UserError, match="SLURM node list"):
        slurm.expand_hostlist(nodelist)


def test_rendezvous_host_is_the_first_node_of_the_step_not_of_the_job():
    env = {"SLURM_STEP_NODELIST": "rack[2]-node[03-04]", "SLURM_JOB_NODELIST": "rack[1-2]-node[01-04]"}
    assert slurm.rendezvous_host(env) == "rack2-node03"
    assert slurm.rendezvous_host({"SLURM_JOB_NODELIST": "gpu[01-04]-ib"}) == "gpu01-ib"


def test_rendezvous_host_of_a_heterogeneous_job_is_group_0s_first_node():
    env = {
        "SLURM_HET_SIZE": "2",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "gpu[07-08]",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "cpu[01-02]",
        "SLURM_STEP_NODELIST": "cpu[01-02]",
    }
    assert slurm.rendezvous_host(env) == "gpu07"


def test_a_heterogeneous_job_without_group_0s_node_list_is_refused_with_the_fix():
    with pytest.raises(UserError, match="heterogeneous SLURM job.*MASTER_ADDR"):
        slurm.rendezvous_host({"SLURM_HET_SIZE": "2", "SLURM_STEP_NODELIST": "a1"})


def srun_env(**extra: str) -> dict[str, str]:
    return {
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "n[01-02]",
        **extra,
    }


def test_srun_task_takes_the_steps_first_node_as_rendezvous_address():
    assert detect(srun_env(SLURM_STEP_NODELIST="n[02-03]-ib")).master_addr == "n02-ib"


def test_torchrun_inside_an_srun_step_is_refused_naming_the_supported_srun_form():
    env = {**srun_env(SLURM_STEP_ID="0"), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "8"}
    env |= {"MASTER_ADDR": "n01", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "7"}
    with pytest.raises(UserError, match=r"torchrun inside an srun step.*srun --ntasks-per-node="):
        detect(env)
    assert detect({**env, LOCAL_AGENT_VAR: "123"}).source == "torchrun"  # resnet-repro's own workers
    del env["SLURM_STEP_ID"]  # torchrun in the batch shell itself: no step
    assert detect(env).world_size == 8


# ------------------------------------------------------------------------------------ job states


@pytest.mark.parametrize("form", ["txt", "json"])
@pytest.mark.parametrize(
    ("name", "base", "reason", "restarts", "preempted"),
    [
        ("running", "RUNNING", "None", 0, False),
        ("cancel_completing", None, "None", 0, False),  # COMPLETING hides CANCELLED
        ("cancelled", "CANCELLED", "None", 0, False),
        ("admin_requeue_completing", None, "None", 1, False),
        ("preempt_requeue_pending", "PENDING", "BeginTime", 1, False),
        ("timeout_completing", None, "TimeLimit", 0, False),
        ("timeout", "TIMEOUT", "TimeLimit", 0, False),
        ("preempt_cancel_grace_running", "RUNNING", "None", 0, True),
        ("preempt_cancel_completing", None, "None", 0, True),
        ("preempted", "PREEMPTED", "None", 0, True),
    ],
)
def test_job_state_of_slurm_22_05_reads_the_same_from_text_and_json(
    name: str, form: str, base: str | None, reason: str, restarts: int, preempted: bool
):
    v = view(name, form)
    assert (v.base, v.reason, v.restarts, v.preempted) == (base, reason, restarts, preempted)


def test_json_of_newer_slurm_shows_the_base_state_beside_the_completing_flag():
    record = {
        "job_id": 12,
        "job_state": ["CANCELLED", "COMPLETING"],
        "state_reason": "None",
        "restart_cnt": 2,
        "preempt_time": {"set": True, "infinite": False, "number": 0},
    }
    v = slurm.parse_job_json(json.dumps({"jobs": [record]}), "12")
    assert (v.base, v.states, v.restarts, v.preempted) == ("CANCELLED", ("CANCELLED", "COMPLETING"), 2, False)


def test_heterogeneous_job_text_is_read_from_component_0_not_the_last_line():
    lines = [
        "JobId=40 HetJobId=40 HetJobOffset=0 JobState=TIMEOUT Reason=TimeLimit Restarts=0",
        "JobId=41 HetJobId=40 HetJobOffset=1 JobState=RUNNING Reason=None Restarts=0",
    ]
    assert slurm.parse_job_text("\n".join(lines), "40").base == "TIMEOUT"


def test_array_task_is_read_from_its_own_record():
    lines = [
        "JobId=51 ArrayJobId=50 ArrayTaskId=0 JobState=RUNNING Reason=None Restarts=0",
        "JobId=52 ArrayJobId=50 ArrayTaskId=1 JobState=COMPLETING Reason=TimeLimit Restarts=3",
    ]
    v = slurm.parse_job_text("\n".join(lines), "50_1")
    assert (v.reason, v.restarts) == ("TimeLimit", 3)


def test_a_reason_with_spaces_is_read_whole():
    v = slurm.parse_job_text("JobId=3 JobState=PENDING Reason=launch failed requeued held Restarts=1", "3")
    assert v.reason == "launch failed requeued held"


# ------------------------------------------------------------------------------------- decisions


def fixture_query(name: str, form: str = "txt"):
    def query(job: str):
        assert job == JOB_IDS[name]
        return view(name, form), "fixture"

    return query


@pytest.mark.parametrize("form", ["txt", "json"])
@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("cancel_completing", "stop"),  # a plain scancel: never requeued
        ("user_sigterm_running", "stop"),  # scancel --signal=TERM, a kill: no evidence
        ("admin_requeue_completing", "requeued"),
        ("preempt_requeue_completing", "requeued"),
        ("preempt_requeue_pending", "requeued"),
        ("timeout_completing", "requeue"),
        # in a partition with PreemptMode=REQUEUE: SLURM requeues it at the grace's end; the run waits
        ("preempt_cancel_grace_running", "requeued"),
        ("preempt_cancel_completing", "requeued"),
    ],
)
def test_sigterm_requeues_only_on_evidence_of_a_time_limit_or_preemption(name: str, form: str, action: str):
    decision = slurm.decide_stop(
        "SIGTERM",
        JOB_IDS[name],
        0,
        True,
        query=fixture_query(name, form),
        preempt_mode=lambda p: "REQUEUE",
        preempt_type=lambda: "preempt/partition_prio",
    )
    assert decision.action == action, decision.why
    # only a preemption that SLURM requeues itself is waited for; everything else exits at once
    assert (decision.wait_s > 0) == name.startswith("preempt_cancel"), decision


@pytest.mark.parametrize("form", ["txt", "json"])
@pytest.mark.parametrize("name", ["preempt_cancel_grace_running", "preempt_cancel_completing"])
def test_grace_preemption_in_cancel_mode_is_not_requeued_against_slurms_cancel(name: str, form: str):
    asked = []

    def mode(partition):
        asked.append(partition)
        return "CANCEL"

    decision = slurm.decide_stop(
        "SIGTERM", JOB_IDS[name], 0, True, query=fixture_query(name, form), preempt_mode=mode
    )
    assert decision.action == "stop" and "PreemptMode=CANCEL" in decision.why, decision.why
    assert asked == ["local"]


def test_sigterm_while_the_job_is_being_cancelled_says_why_it_is_not_requeued():
    decision = slurm.decide_stop("SIGTERM", "1", 0, True, query=fixture_query("cancel_completing"))
    assert "no sign of a time limit or preemption" in decision.why and "JobState=COMPLETING" in decision.why


def test_an_earlier_requeue_is_not_mistaken_for_this_one_when_the_start_count_is_recorded():
    # the job already ran once (Restarts=1 at start-up); a cancel now must not read as "requeued"
    decision = slurm.decide_stop("SIGTERM", "4", 1, True, query=fixture_query("admin_requeue_completing"))
    assert decision.action == "stop", decision.why


@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGUSR2"])
def test_usr1_and_usr2_requeue_unless_the_controller_shows_a_preemption(signal_name: str):
    def unknown(job: str):
        return None, "`scontrol show job` did not answer within 10 s"

    # the time-limit warning: requeued whether or not the controller answers
    assert slurm.decide_stop(signal_name, "6", None, True, query=unknown).action == "requeue"
    running = fixture_query("user_sigterm_running")
    assert slurm.decide_stop(signal_name, "6", None, True, query=running).action == "requeue"
    assert slurm.decide_stop(signal_name, "6", None, False, query=unknown).action == "stop"


@pytest.mark.parametrize("form", ["txt", "json"])
@pytest.mark.parametrize(("mode", "action"), [("CANCEL", "stop"), ("REQUEUE", "requeued")])
def test_the_user_signal_of_a_preemption_is_decided_as_the_preemption(form: str, mode: str, action: str):
    """PreemptParameters=send_user_signal: SLURM sends --signal's USR1 at a preemption's start; under
    PreemptMode=CANCEL a requeue of ours would undo the cancel SLURM chose, under REQUEUE SLURM
    requeues it at the grace's end (the run waits for that, as for the SIGTERM)."""
    decision = slurm.decide_stop(
        "SIGUSR1",
        "7",
        0,
        True,
        query=fixture_query("preempt_cancel_grace_running", form),
        preempt_mode=lambda p: mode,
        preempt_type=lambda: "preempt/partition_prio",
    )
    assert decision.action == action and f"PreemptMode={mode}" in decision.why, decision.why
    assert (decision.wait_s > 0) == (action == "requeued")


def _edited(name: str, form: str, *replacements: tuple[str, str]):
    text = (ASSETS / f"{name}.{form}").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    parse = slurm.parse_job_json if form == "json" else slurm.parse_job_text
    return lambda job: (parse(text, job), "fixture")


@pytest.mark.parametrize(
    ("form", "flag"),
    [("txt", ("Requeue=1", "Requeue=0")), ("json", ('"requeue": true', '"requeue": false'))],
)
def test_a_preempted_job_slurm_may_not_requeue_stops_with_the_resume_line(form: str, flag: tuple[str, str]):
    """PreemptMode=REQUEUE "preempts jobs by requeuing them (if possible) or canceling them": a job
    without --requeue (and JobRequeue=0) is cancelled at the grace's end, not requeued."""
    query = _edited("preempt_cancel_grace_running", form, flag)
    assert query("7")[0].requeue is False
    decision = slurm.decide_stop(
        "SIGTERM",
        "7",
        0,
        True,
        query=query,
        preempt_mode=lambda p: "REQUEUE",
        preempt_type=lambda: "preempt/partition_prio",
    )
    assert decision.action == "stop" and "Requeue=0" in decision.why and decision.wait_s == 0, decision


@pytest.mark.parametrize("kind", ["preempt/qos", None])
def test_a_preemption_whose_mode_the_partition_does_not_decide_is_not_called_requeued(kind: str | None):
    """Under PreemptType=preempt/qos the QOS's PreemptMode applies, not the partition's: the run
    stops with the resume line rather than wait for a requeue that may be a cancel."""
    decision = slurm.decide_stop(
        "SIGTERM",
        "7",
        0,
        True,
        query=fixture_query("preempt_cancel_grace_running"),
        preempt_mode=lambda p: "REQUEUE",
        preempt_type=lambda: kind,
    )
    assert decision.action == "stop" and decision.wait_s == 0, decision
    assert ("PreemptType=preempt/qos" if kind else "PreemptType") in decision.why


@pytest.mark.parametrize("form", ["txt", "json"])
def test_a_job_past_its_deadline_is_not_requeued(form: str):
    """sbatch --deadline: SLURM removes a job that cannot end before its deadline; a requeued one
    would be removed again."""
    if form == "txt":
        query = _edited("timeout_completing", form, ("Reason=TimeLimit", "Reason=DeadLine"))
    else:
        query = _edited("timeout", form, ('"TIMEOUT"', '"DEADLINE"'), ('"TimeLimit"', '"DeadLine"'))
    decision = slurm.decide_stop("SIGTERM", "5", 0, True, query=query)
    assert decision.action == "stop" and "deadline" in decision.why, decision.why


def test_time_limit_with_requeue_turned_off_stops_and_says_so():
    decision = slurm.decide_stop("SIGTERM", "5", 0, False, query=fixture_query("timeout_completing"))
    assert decision.action == "stop" and "trainer.requeue=false" in decision.why


def test_outside_slurm_a_stop_is_never_requeued():
    assert slurm.decide_stop("SIGUSR1", None, None, True).action == "stop"


def runner(returncode: int = 0, stdout: str = "", stderr: str = "", raises: BaseException | None = None):
    calls: list[list[str]] = []

    def run(args, **kwargs):
        calls.append(list(args))
        assert kwargs["timeout"] <= 10  # within SLURM's KillWait, twice over
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def replies(*answers: tuple[int, str, str]):
    """A stand-in for subprocess.run giving (returncode, stdout, stderr) answers in turn."""
    left = iter(answers)

    def run(args, **kwargs):
        rc, out, err = next(left)
        return subprocess.CompletedProcess(args, rc, out, err)

    return run


@pytest.mark.parametrize(
    ("run", "said"),
    [
        (runner(raises=subprocess.TimeoutExpired("scontrol", 10)), "did not answer within 10 s"),
        (runner(raises=FileNotFoundError(2, "No such file or directory")), "could not run"),
        (runner(1, stderr="slurm_load_jobs error: Unable to contact slurm controller"), "Unable to contact"),
        (runner(0, stdout="garbage"), "cannot read"),
    ],
    ids=["timeout", "no-scontrol", "controller-down", "unreadable"],
)
def test_unknown_job_state_never_requeues_and_says_why_in_one_line(run, said: str):
    decision = slurm.decide_stop("SIGTERM", "3", 0, True, query=lambda job: slurm.query_job(job, run=run))
    assert decision.action == "stop"
    assert "state is unknown" in decision.why and said in decision.why and "\n" not in decision.why


def test_query_falls_back_to_the_text_form_where_scontrol_has_no_json():
    unsupported = (ASSETS / "scontrol_json_unsupported_22.05.stderr").read_text()
    text = (ASSETS / "timeout_completing.txt").read_text()
    run = replies(*[(1, "", unsupported), (0, text, "")])

    v, how = slurm.query_job("5", run=run)
    assert v is not None and v.reason == "TimeLimit" and how == "scontrol show job -o"


def test_query_prefers_the_json_form():
    run = runner(0, stdout=(ASSETS / "preempted.json").read_text())
    v, how = slurm.query_job("7", run=run)
    assert v is not None and v.base == "PREEMPTED" and run.calls[0][:2] == ["scontrol", "--json"]


def test_restart_count_comes_from_the_controller_not_the_environment():
    run = runner(0, stdout=(ASSETS / "admin_requeue_completing.json").read_text())
    assert slurm.restart_count("4", environ={"SLURM_RESTART_COUNT": "0"}, run=run) == 1
    down = runner(raises=subprocess.TimeoutExpired("scontrol", 10))
    assert slurm.restart_count("4", environ={"SLURM_RESTART_COUNT": "2"}, run=down) == 2
    assert slurm.restart_count("4", environ={}, run=down) is None


def test_a_refused_requeue_says_why_and_is_not_asked_again():
    refused = runner(1, stderr="Requested operation is presently disabled")
    ok, why = slurm.requeue_job("8", restarts_before=0, attempts=3, run=refused)
    assert not ok and "presently disabled" in why
    assert refused.calls == [["scontrol", "requeue", "8"]]
    assert slurm.requeue_job("8", restarts_before=0, run=runner(0)) == (True, "")


def controller(requeue: list[BaseException | tuple[int, str]], shows: list[str]):
    """A stand-in for subprocess.run of a slow controller: `scontrol requeue` gives the `requeue`
    answers in turn (an exception raised, or (returncode, stderr)); `scontrol show job` (the 22.05
    build: no --json) shows the captured states `shows` in turn."""
    answers, states = iter(requeue), iter(shows)
    calls: list[list[str]] = []

    def run(args, **kwargs):
        calls.append(list(args))
        assert kwargs["timeout"] <= 10
        if args[1] == "requeue":
            answer = next(answers)
            if isinstance(answer, BaseException):
                raise answer
            return subprocess.CompletedProcess(args, answer[0], "", answer[1])
        if args[1] == "--json":
            stderr = (ASSETS / "scontrol_json_unsupported_22.05.stderr").read_text()
            return subprocess.CompletedProcess(args, 1, "", stderr)
        return subprocess.CompletedProcess(args, 0, (ASSETS / f"{next(states)}.txt").read_text(), "")

    run.calls = calls  # type: ignore[attr-defined]
    return run


def requeues(run) -> int:
    return sum(call[1] == "requeue" for call in run.calls)


def test_a_requeue_whose_answer_came_too_late_counts_when_the_controller_shows_it_done():
    # the controller acted on the request, but scontrol's answer did not come within the timeout
    slow = controller([subprocess.TimeoutExpired("scontrol", 10)], ["admin_requeue_completing"])
    ok, said = slurm.requeue_job("4", restarts_before=0, attempts=2, run=slow)
    assert ok and "did not answer within 10 s" in said and "the controller shows the requeue" in said
    assert requeues(slow) == 1  # not asked twice: a second request would requeue the rerun


def test_a_requeue_killed_by_the_requeues_own_sigterm_counts_when_the_controller_shows_it_done():
    # scontrol runs inside the job: SLURM's requeue ends the job's processes, and can end scontrol
    # before it exits (seen on 22.05 under load: "exit -15", the job requeued all the same)
    killed = controller([(-15, "")], ["admin_requeue_completing"])
    ok, said = slurm.requeue_job("4", restarts_before=0, attempts=2, run=killed)
    assert ok and "ended by SIGTERM" in said
    assert requeues(killed) == 1


def test_a_lost_requeue_answer_is_not_asked_again_where_the_controller_cannot_say_whether_it_took():
    killed = controller([(-15, "")], [])

    def run(args, **kwargs):  # and then no answer to `scontrol show job`
        if args[1] != "requeue":
            raise subprocess.TimeoutExpired(args, 10)
        return killed(args, **kwargs)

    ok, why = slurm.requeue_job("4", restarts_before=0, attempts=2, run=run)
    assert not ok and "SIGTERM" in why and "unknown" in why
    assert requeues(killed) == 1  # a second request could requeue the rerun


@pytest.mark.parametrize(
    "lost",
    [
        subprocess.TimeoutExpired("scontrol", 10),
        (1, "slurm_requeue error: Socket timed out on send/recv operation"),
        (1, "slurm_requeue error: Unable to contact slurm controller (connect failure)"),
    ],
    ids=["no-answer", "socket-timed-out", "no-contact"],
)
def test_a_requeue_lost_by_a_busy_controller_is_asked_again_when_the_job_shows_no_requeue(lost):
    busy = controller([lost, (0, "")], ["running"])
    ok, said = slurm.requeue_job("2", restarts_before=0, attempts=2, run=busy)
    assert ok and said.endswith("; asked again")
    assert requeues(busy) == 2


def test_a_refusal_of_the_second_request_is_checked_a_first_request_acted_on_late_causes_it():
    # the check ran before the controller got to the first request; the second is then refused
    late = controller(
        [subprocess.TimeoutExpired("scontrol", 10), (1, "slurm_requeue error: Job is pending execution")],
        ["running", "preempt_requeue_pending"],
    )
    ok, said = slurm.requeue_job("2", restarts_before=0, attempts=2, run=late)
    assert ok and "pending execution" in said and "the controller shows the requeue" in said
    refused = controller(
        [subprocess.TimeoutExpired("scontrol", 10), (1, "Job is pending execution")], ["running"] * 2
    )
    ok, said = slurm.requeue_job("2", restarts_before=0, attempts=2, run=refused)
    assert not ok and said.endswith("the controller shows no requeue")


def test_a_requeue_that_never_answers_is_a_stop_that_says_so_within_its_attempts():
    never = controller([subprocess.TimeoutExpired("scontrol", 10)] * 2, ["running", "running"])
    ok, why = slurm.requeue_job("2", restarts_before=0, attempts=2, run=never)
    assert (
        not ok
        and why.count("did not answer within 10 s") == 2
        and why.endswith("the controller shows no requeue")
    )
    assert requeues(never) == 2


def test_a_pending_job_counts_as_requeued_where_the_restart_count_at_start_is_unknown():
    late = controller([subprocess.TimeoutExpired("scontrol", 10)], ["preempt_requeue_pending"])
    assert slurm.requeue_job("2", restarts_before=None, attempts=2, run=late)[0] is True
    assert requeues(late) == 1


@pytest.mark.parametrize("shown", ["admin_requeue_completing", "running"])
def test_without_the_restart_count_at_start_a_job_not_pending_is_unknown_and_not_asked_again(shown):
    # 22.05 shows a job it has just requeued as COMPLETING with Restarts=1: requeued or not, unknown
    unknown = controller([subprocess.TimeoutExpired("scontrol", 10)], [shown])
    ok, said = slurm.requeue_job(JOB_IDS[shown], restarts_before=None, attempts=2, run=unknown)
    assert not ok and "unknown" in said and "the restart count before unknown" in said
    assert requeues(unknown) == 1


def test_scontrol_ended_by_a_signal_without_a_name_is_still_a_lost_answer():
    killed = controller([(-40, "")], ["admin_requeue_completing"])
    ok, said = slurm.requeue_job("4", restarts_before=0, attempts=1, run=killed)
    assert ok and "ended by signal 40" in said


def test_job_ref_of_an_array_task_is_named_with_its_task():
    env = {"SLURM_JOB_ID": "10", "SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "0"}
    assert slurm.job_ref(env) == "9_0"
    assert slurm.job_ref({"SLURM_JOB_ID": "10"}) == "10"
    assert slurm.job_ref({}) is None


# ------------------------------------------------------------- any JSON failure; one port per srun step
@pytest.mark.parametrize(
    "json_failure",
    [
        (1, "", "scontrol: unrecognized option '--json'"),  # 22.05
        (1, "", "scontrol: error: could not find plugin for application/json"),  # built without it
        (0, "not json at all", ""),
    ],
    ids=["no-json-option", "no-json-plugin", "unreadable-json"],
)
def test_any_failure_of_the_json_form_falls_back_to_the_text_form(json_failure):
    text = (ASSETS / "timeout_completing.txt").read_text()
    run = replies(*[json_failure, (0, text, "")])

    v, how = slurm.query_job("5", run=run)
    assert v is not None and v.reason == "TimeLimit" and how == "scontrol show job -o"


def test_concurrent_steps_of_one_allocation_rendezvous_on_different_ports():
    step = {
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_STEP_NODELIST": "node1",
        "SLURM_JOB_ID": "123",
    }
    ports = {detect({**step, "SLURM_STEP_ID": str(s)}).master_port for s in range(4)}
    assert len(ports) == 4 and all(20000 <= p < 40000 for p in ports)
    # every task of one step computes the same port
    assert (
        detect({**step, "SLURM_STEP_ID": "1"}).master_port
        == detect({**step, "SLURM_STEP_ID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}).master_port
    )


# --------------------------------------------------------------- captured from a real SLURM 25.11.7
ASSETS_25 = ASSETS / "25.11"
CAPTURED_25 = {  # fixture: (job ref, base, reason, restarts, preempted, what a SIGTERM then leads to)
    "running": ("1", "RUNNING", "None", 0, False, "stop"),
    "array_task0_running": ("3_0", "RUNNING", "None", 0, False, "stop"),
    "array_task0_completed": ("3_0", "COMPLETED", "None", 0, False, None),
    "cancel_completing": ("6", "CANCELLED", "None", 0, False, "stop"),
    "cancelled": ("6", "CANCELLED", "None", 0, False, "stop"),
    "timeout_completing": ("8", "TIMEOUT", "TimeLimit", 0, False, "requeue"),
    "timeout": ("8", "TIMEOUT", "TimeLimit", 0, False, "requeue"),
    "admin_requeue_completing": ("10", "PENDING", "None", 1, False, "requeued"),
    "admin_requeue_pending": ("10", "PENDING", "BeginTime", 1, False, "requeued"),
    "preempt_requeue_completing": ("11", "PENDING", "None", 1, True, "requeued"),
    "preempt_requeue_pending": ("11", "PENDING", "BeginTime", 1, False, "requeued"),
    "preempt_cancel_grace_running": ("15", "RUNNING", "None", 0, True, "stop"),  # captured in CANCEL mode
    "preempt_cancel_completing": ("15", "PREEMPTED", "None", 0, True, "stop"),
    "preempted": ("15", "PREEMPTED", "None", 0, True, "stop"),
    "user_sigterm_running": ("19", "RUNNING", "None", 0, False, "stop"),
    "hetjob_running": ("1", "RUNNING", "None", 0, False, "stop"),
    "hetjob_running_component1": ("1+1", "RUNNING", "None", 0, False, "stop"),
}


@pytest.mark.parametrize("name", sorted(CAPTURED_25))
def test_job_states_of_slurm_25_11_read_as_captured_and_decide_as_they_mean(name: str):
    ref, base, reason, restarts, preempted, action = CAPTURED_25[name]
    v = slurm.parse_job_json((ASSETS_25 / f"{name}.json").read_text(), ref)
    assert (v.base, v.reason, v.restarts, v.preempted) == (base, reason, restarts, preempted)
    if action is not None:
        decision = slurm.decide_stop(
            "SIGTERM", ref, 0, True, query=lambda job: (v, "fixture"), preempt_mode=lambda p: "CANCEL"
        )
        assert decision.action == action, decision.why


TEXT_25 = sorted(n for n, (ref, *_) in CAPTURED_25.items() if "_" not in ref and "+" not in ref)


@pytest.mark.parametrize("name", TEXT_25)
def test_the_text_form_of_slurm_25_11_gives_the_same_reason_and_restarts(name: str):
    ref, base, reason, restarts, _, _ = CAPTURED_25[name]
    v = slurm.parse_job_text((ASSETS_25 / f"{name}.txt").read_text(), ref)
    # the text form hides the base state behind COMPLETING, as 22.05 did
    assert v.base in (base, None) and (v.reason, v.restarts) == (reason, restarts)


def test_a_throttled_array_task_is_read_as_itself_in_the_captured_25_11_json():
    # the pending remainder of the array comes first in what scontrol prints for any of its tasks
    answer = (ASSETS_25 / "array_task0_running.json").read_text()
    records = json.loads(answer)["jobs"]
    assert records[0]["job_state"] == ["PENDING"] and records[0]["array_task_id"]["set"] is False
    v, how = slurm.query_job("3_0", run=runner(0, stdout=answer))
    assert v is not None and v.base == "RUNNING" and how == "scontrol --json show job"


@pytest.mark.parametrize("name", ["purged", "purged_array_task", "never_existed"])
def test_a_purged_job_of_slurm_25_11_is_unknown_not_unreadable(name: str):
    meta = json.loads((ASSETS_25 / f"{name}.meta.json").read_text())
    stdout = (ASSETS_25 / f"{name}.json").read_text()
    run = runner(meta["returncode"], stdout=stdout, stderr=meta["stderr"])
    v, how = slurm.query_job("1", run=run)
    assert v is None and slurm.UNKNOWN_JOB in how and len(run.calls) == 1


def test_a_purged_job_of_slurm_22_05_is_unknown_not_unreadable():
    folder = ASSETS / "22.05"
    no_json = json.loads((folder / "scontrol_json_unsupported.meta.json").read_text())
    purged = json.loads((folder / "purged.txt.meta.json").read_text())
    run = replies(
        *[(no_json["returncode"], "", no_json["stderr"]), (purged["returncode"], "", purged["stderr"])]
    )

    v, how = slurm.query_job("1", run=run)
    assert v is None and slurm.UNKNOWN_JOB in how


def test_the_clusters_preempt_type_is_read_from_scontrol_show_config():
    # captured from the 22.05 test cluster (scripts/slurm/local_cluster.sh): `scontrol show config`
    text = (ASSETS / "show_config.txt").read_text()

    def run(args, **kwargs):
        assert args == ["scontrol", "show", "config"]
        return subprocess.CompletedProcess(args, 0, text, "")

    assert slurm.cluster_preempt_type(run=run) == "preempt/partition_prio"
    qos = text.replace("preempt/partition_prio", "preempt/qos")
    answered = subprocess.CompletedProcess([], 0, qos, "")
    assert slurm.cluster_preempt_type(run=lambda a, **k: answered) == "preempt/qos"
    down = subprocess.CompletedProcess([], 1, "", "slurm_load_ctl_conf error: Unable to contact slurm")
    assert slurm.cluster_preempt_type(run=lambda a, **k: down) is None


def test_the_expediting_flag_is_not_read_as_the_jobs_base_state():
    assert slurm.JobView(("EXPEDITING", "RUNNING")).base == "RUNNING"
    assert slurm.JobView(("EXPEDITING",)).base is None
