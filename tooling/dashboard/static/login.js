// The login page: say when the last attempt failed, and return to the page that asked for the login.
document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  document.getElementById("login-failed").hidden = params.get("failed") !== "1";
  const next = params.get("next");
  if (next && ["/", "/lines", "/trace"].includes(next)) {
    for (const field of document.querySelectorAll("input.next")) field.value = next;
  }
});
