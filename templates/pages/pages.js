// The hosted pages' one script: it reads the token from the link, and POSTs it to the
// service's JSON API only when the person presses the button (opening the link spends nothing).
// No storage: nothing of the token or the password outlives the page.
(function () {
  "use strict";

  var token = new URLSearchParams(window.location.search).get("token") || "";

  function show(id) {
    ["missing", "reset-form", "verify-form", "done", "expired", "failed"].forEach(function (name) {
      var element = document.getElementById(name);
      if (element) {
        element.hidden = name !== id;
      }
    });
  }

  // The API sits beside the pages: <base>/account/<page> -> <base>/auth/...
  function api(path) {
    return new URL("../" + path, window.location.href).toString();
  }

  function post(path, body) {
    return fetch(api(path), {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        return { status: response.status, body: json };
      });
    });
  }

  function reasons(list, messages) {
    list.textContent = "";
    messages.forEach(function (message) {
      var item = document.createElement("li");
      item.textContent = message;
      list.appendChild(item);
    });
  }

  function start(formId, onSubmit) {
    var form = document.getElementById(formId);
    if (!form) {
      return;
    }
    if (!token) {
      show("missing");
      return;
    }
    show(formId);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      button.disabled = true;
      onSubmit(form).catch(function () { show("failed"); }).then(function () {
        button.disabled = false;
      });
    });
  }

  start("reset-form", function (form) {
    var list = document.getElementById("reasons");
    var password = document.getElementById("new-password").value;
    if (password !== document.getElementById("repeat-password").value) {
      reasons(list, ["the two passwords differ"]);
      return Promise.resolve();
    }
    return post("auth/password/reset", { token: token, new_password: password }).then(function (answer) {
      if (answer.status === 200) {
        show("done");
      } else if (answer.body.error_code === "WEAK_PASSWORD") {
        reasons(list, (answer.body.errors || []).map(function (e) { return e.message; }));
        document.getElementById("new-password").focus();
      } else if (answer.body.error_code === "INVALID_RESET_TOKEN") {
        show("expired");
      } else {
        reasons(list, [answer.body.detail || "something went wrong; try again"]);
      }
    });
  });

  start("verify-form", function () {
    return post("auth/email/verify", { token: token }).then(function (answer) {
      if (answer.status === 200) {
        show("done");
      } else if (answer.body.error_code === "INVALID_VERIFICATION_TOKEN") {
        show("expired");
      } else {
        show("failed");
      }
    });
  });
})();
