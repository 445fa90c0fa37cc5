"""A deployment policy entry applied to the pool's scale set, batch by batch under the controller: the scale set's
model gets user data that starts the engine with the entry's arguments (the same boot script as AWS's), and each
batch's instances are upgraded to the model (`manualupgrade`), which re-runs the boot with it. The controller drains
each batch first and waits for its VMs to be Succeeded again (control/controller/rollout.py), so the scale set's
upgrade policy stays Manual and Azure never upgrades a VM that still serves. RBAC: virtualMachineScaleSets/write
and manualUpgrade/action."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from azure.mgmt.compute.models import (
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateVMProfile,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
)

from control.providers.aws.deploy import user_data

if TYPE_CHECKING:
    from control.providers.azure.provider import AzureProvider


def restart(p: AzureProvider, instance_ids: list[str], entry: dict[str, Any], revision: int | None) -> str:
    compute = p._compute()
    script = base64.b64encode(user_data(entry, revision).encode()).decode()
    vmss = p._vmss()
    profile = vmss.virtual_machine_profile
    if profile is None or profile.user_data != script:  # the first batch changes the model; later ones find it
        update = VirtualMachineScaleSetUpdate(virtual_machine_profile=VirtualMachineScaleSetUpdateVMProfile(
            user_data=script))
        p._run("update the scale set's model", lambda hook: compute.virtual_machine_scale_sets.begin_update(
            p.resource_group, p.vmss, update, raw_response_hook=hook))
    ids = VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=[str(i) for i in instance_ids])
    return p._run(f"upgrade instances {', '.join(map(str, instance_ids))} to the model",
                  lambda hook: compute.virtual_machine_scale_sets.begin_update_instances(
                      p.resource_group, p.vmss, ids, raw_response_hook=hook))
