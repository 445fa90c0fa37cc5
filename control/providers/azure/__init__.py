"""The `azure` provider: a virtual machine scale set's capacity (Uniform orchestration)."""

from control.providers.base import Field, pattern, timeout_field

FIELDS = (
    Field("subscription_id", "the Azure subscription's id (a GUID)", required=True,
          check=pattern(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}",
                        "must be a subscription id such as 00000000-0000-0000-0000-000000000000")),
    Field("resource_group", "the scale set's resource group", required=True,
          check=pattern(r"[-\w._()]{0,89}[-\w_()]", "must be a resource group name (1-90 letters, digits, '-', "
                                                    "'_', '.', '(' or ')', not ending in '.')")),
    Field("vmss", "the virtual machine scale set's name", required=True,
          check=pattern(r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,62}[A-Za-z0-9_]?",
                        "must be a scale set name (1-64 letters, digits, '-', '_' or '.')")),
    timeout_field(30.0),
)
SECRETS_HINT = ("set SWITCHYARD_AZURE_TENANT_ID, SWITCHYARD_AZURE_CLIENT_ID and SWITCHYARD_AZURE_CLIENT_SECRET_FILE "
                "(a file holding the service principal's secret), or SWITCHYARD_AZURE_TOKEN_FILE")
