"""ML2 mechanism driver "fakebind" for the local OpenStack of `cargo xtask openstack`.

There is no L2 agent (no Open vSwitch, no Linux bridge): this driver binds every port on every
host at once, so ports go ACTIVE and Nova's fake servers get their fixed IPs.
"""
from neutron_lib import constants as const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class FakeBindMechanismDriver(api.MechanismDriver):
    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False},
                status=const.PORT_STATUS_ACTIVE,
            )
            return
