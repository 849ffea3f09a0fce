"""Which team owns an image name, and what the caller may do with it.

Image names live in one store for the whole host (`hutch.runtime.ImageStore`). A name a member
key makes (pull, import, build, tag) belongs to its team: other teams' member keys do not see
it (404, as for an unknown name) and cannot take it (409 `image_name_taken`). A name with no
owner — the built-in images, those made before teams, those an admin key makes — is shared:
every team uses it, only an admin key replaces or removes it.
"""

from __future__ import annotations

from hutch.runtime import Image
from hutch.server._errors import Forbidden, TeamConflict
from hutch.server.services._caller import CURRENT_CALLER
from hutch.server.store._sqlite import Store


class ImageOwners:
    def __init__(self, store: Store) -> None:
        self._store = store

    def visible(self, requested: str, image: Image) -> bool:
        """May the caller use `image`, asked for as `requested` (a name or an id)?"""
        caller = CURRENT_CALLER.get()
        if caller is None or caller.is_admin:
            return True
        owners = self._store.image_owners()
        owner = owners.get(requested, owners.get(image.name))
        return owner is None or owner == caller.team

    def visible_names(self, images: list[Image]) -> list[Image]:
        caller = CURRENT_CALLER.get()
        if caller is None or caller.is_admin:
            return images
        owners = self._store.image_owners()
        return [i for i in images if owners.get(i.name) in (None, caller.team)]

    def check_write(self, name: str, exists: bool) -> None:
        """Before a write to `name` (pull, import, build, tag, remove).

        Raises:
            TeamConflict: another team owns the name (image_name_taken).
            Forbidden: a member key writing a shared name that exists.
        """
        caller = CURRENT_CALLER.get()
        if caller is None or caller.is_admin:
            return
        owner = self._store.image_owners().get(name)
        if owner is not None and owner != caller.team:
            raise TeamConflict(
                f"image name {name!r} belongs to another team; choose another name",
                code="image_name_taken",
            )
        if owner is None and exists:
            raise Forbidden(
                f"image {name!r} is shared by every team: only an admin key replaces or "
                "removes it; give your image another name"
            )

    def claim(self, name: str) -> None:
        """After a write to `name`: a member's name is its team's, an admin's is shared."""
        caller = CURRENT_CALLER.get()
        if caller is None or caller.is_admin:
            self._store.delete_image_owner(name)
        else:
            self._store.set_image_owner(name, caller.team)

    def forget(self, name: str) -> None:
        self._store.delete_image_owner(name)
