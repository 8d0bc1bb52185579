"""Host permissions, as in the seed plan's co-DM support."""

from __future__ import annotations

from typing import Any, Final

import attrs


@attrs.frozen(kw_only=True)
class Permissions:
    can_edit_scenes: bool = False
    "``scene/*`` events."
    can_manage_players: bool = False
    "``session/kick``."
    can_control_initiative: bool = False
    "``initiative/*`` events."
    can_transfer_host: bool = False
    "``session/transfer-host``."

    def to_json(self) -> dict[str, bool]:
        return {
            "canEditScenes": self.can_edit_scenes,
            "canManagePlayers": self.can_manage_players,
            "canControlInitiative": self.can_control_initiative,
            "canTransferHost": self.can_transfer_host,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Permissions:
        return cls(
            can_edit_scenes=bool(data.get("canEditScenes")),
            can_manage_players=bool(data.get("canManagePlayers")),
            can_control_initiative=bool(data.get("canControlInitiative")),
            can_transfer_host=bool(data.get("canTransferHost")),
        )


PRIMARY: Final = Permissions(can_edit_scenes=True, can_manage_players=True,
                             can_control_initiative=True, can_transfer_host=True)
"The primary host may do everything."
CO_HOST: Final = Permissions(can_edit_scenes=True, can_control_initiative=True)
"A co-host edits scenes and runs initiative."
NONE: Final = Permissions()
"Players hold no host permission."
