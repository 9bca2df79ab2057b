"""The AWX examples in docs/awx/: the job-template playbook is valid Ansible YAML that uses only
options awx.awx.job_template has, and every survey has the shape AWX's survey_spec endpoint
accepts, asks only for variables the collection reads, and has defaults its own limits allow.

awx.awx is not installed here (it comes from Galaxy), so its options are the list below, taken
from awx.awx's plugins/modules/job_template.py."""
import glob
import json
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AWX = os.path.join(ROOT, "docs", "awx")

JOB_TEMPLATE_OPTIONS = {
    "name", "new_name", "copy_from", "description", "organization", "job_type", "inventory", "project", "playbook",
    "scm_branch", "credential", "credentials", "execution_environment", "forks", "limit", "verbosity", "extra_vars",
    "job_tags", "force_handlers", "skip_tags", "start_at_task", "timeout", "use_fact_cache", "host_config_key",
    "ask_scm_branch_on_launch", "ask_diff_mode_on_launch", "ask_variables_on_launch", "ask_limit_on_launch",
    "ask_tags_on_launch", "ask_skip_tags_on_launch", "ask_job_type_on_launch", "ask_verbosity_on_launch",
    "ask_inventory_on_launch", "ask_credential_on_launch", "ask_execution_environment_on_launch",
    "ask_forks_on_launch", "ask_instance_groups_on_launch", "ask_job_slice_count_on_launch", "ask_labels_on_launch",
    "ask_timeout_on_launch", "survey_enabled", "survey_spec", "become_enabled", "diff_mode", "allow_simultaneous",
    "custom_virtualenv", "job_slice_count", "webhook_service", "webhook_credential", "labels",
    "notification_templates_started", "notification_templates_success", "notification_templates_error",
    "instance_groups", "prevent_instance_group_fallback", "state", "controller_host", "controller_username",
    "controller_password", "controller_oauthtoken", "controller_config_file", "validate_certs", "request_timeout",
}
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def known_variables():
    """Variables the collection reads: role options, the lab inventory's shared variables and the
    shared variables listed in docs/reference.md."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        for entry in yaml.safe_load(open(path, encoding="utf-8"))["argument_specs"].values():
            names |= set(entry.get("options") or {})
    lab = yaml.safe_load(open(os.path.join(ROOT, "playbooks", "inventory", "lab.yml"), encoding="utf-8"))
    names |= set(lab["all"]["vars"])
    reference = open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8").read()
    names |= set(re.findall(r"`(imaging_\w+)`", reference))
    return names


def survey_problems(spec):
    problems = []
    if not isinstance(spec, dict) or not isinstance(spec.get("spec"), list) or not spec["spec"]:
        return ["a survey is a dict with name, description and a non-empty list spec"]
    for key in ("name", "description"):
        if not isinstance(spec.get(key), str):
            problems.append(f"survey {key} must be a string")
    seen = set()
    known = known_variables()
    for question in spec["spec"]:
        var = question.get("variable", "?")
        for key in ("question_name", "variable", "type"):
            if not isinstance(question.get(key), str) or not question[key]:
                problems.append(f"{var}: {key} missing")
        if question.get("type") not in SURVEY_TYPES:
            problems.append(f"{var}: type {question.get('type')!r} is not one of {sorted(SURVEY_TYPES)}")
        if not isinstance(question.get("required"), bool):
            problems.append(f"{var}: required must be true or false")
        if var in seen:
            problems.append(f"{var}: asked twice")
        seen.add(var)
        if var not in known:
            problems.append(f"{var}: no role or playbook of the collection reads this variable")
        if var == "imaging_devices":
            problems.append("imaging_devices must stay in the inventory: a typo in a survey is a disk overwritten")
        default = question.get("default")
        if question.get("type") in ("integer", "float"):
            low, high = question.get("min"), question.get("max")
            if default not in (None, "") and not (isinstance(default, (int, float)) and low <= default <= high):
                problems.append(f"{var}: default {default!r} outside {low}..{high}")
        if question.get("type") in ("multiplechoice", "multiselect"):
            choices = question.get("choices")
            choices = choices.split("\n") if isinstance(choices, str) else choices
            if not choices or not all(isinstance(c, str) for c in choices):
                problems.append(f"{var}: choices must be a list of strings")
            elif default not in (None, "") and any(d not in choices for d in str(default).split("\n")):
                problems.append(f"{var}: default {default!r} is not among the choices")
        if question.get("type") in ("text", "textarea", "password") and isinstance(default, str) and default:
            if not question.get("min", 0) <= len(default) <= question.get("max", 1024):
                problems.append(f"{var}: default {default!r} outside its length limits")
    return problems


def _templates():
    plays = yaml.safe_load(open(os.path.join(AWX, "job-templates.yml"), encoding="utf-8"))
    return [task["awx.awx.job_template"] for play in plays for task in play["tasks"]]


def test_job_templates_use_only_awx_job_template_options():
    templates = _templates()
    assert [t["name"] for t in templates] == ["Deploy image", "Capture image"]
    for template in templates:
        assert set(template) <= JOB_TEMPLATE_OPTIONS, set(template) - JOB_TEMPLATE_OPTIONS
        assert template["job_slice_count"] == 1, "one multicast session needs every participant in one job"
        assert os.path.exists(os.path.join(ROOT, "playbooks", template["playbook"]))


@pytest.mark.parametrize("index", [0, 1])
def test_every_survey_has_the_shape_awx_accepts(index):
    spec = _templates()[index]["survey_spec"]
    if isinstance(spec, str):
        # survey_spec: "{{ lookup('ansible.builtin.file', 'deploy-survey.json') | from_json }}"
        name = re.search(r"lookup\('ansible\.builtin\.file', '([^']+)'\) \| from_json", spec).group(1)
        spec = json.load(open(os.path.join(AWX, name), encoding="utf-8"))
    assert survey_problems(spec) == []


def test_the_survey_check_refuses_what_awx_or_we_would_refuse():
    bad = {"name": "x", "description": "", "spec": [
        {"question_name": "a", "variable": "imaging_port", "type": "integer", "required": True, "min": 1024,
         "max": 65535, "default": 80},
        {"question_name": "b", "variable": "imaging_prot", "type": "text", "required": False},
        {"question_name": "c", "variable": "multicast_image_encrypt", "type": "multiplechoice", "required": True,
         "choices": ["true", "false"], "default": "yes"},
        {"question_name": "d", "variable": "imaging_devices", "type": "list", "required": "yes"},
    ]}
    problems = "\n".join(survey_problems(bad))
    for expected in ("imaging_port: default 80 outside 1024..65535",
                     "imaging_prot: no role or playbook of the collection reads this variable",
                     "multicast_image_encrypt: default 'yes' is not among the choices",
                     "imaging_devices: type 'list' is not one of",
                     "imaging_devices: required must be true or false",
                     "imaging_devices must stay in the inventory"):
        assert expected in problems, problems
